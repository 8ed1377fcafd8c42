/**
 * Shapes the browser-free tests share: participants as the server's snapshots and events carry
 * them (docs/protocol.md).
 */

/**
 * A participant: a connected listener off stage unless `fields` say otherwise.
 * @param {Partial<Record<string, unknown>> & { id: string }} fields
 */
export function participant(fields) {
  return {
    display_name: fields.id,
    role: "listener",
    on_stage: false,
    hand_raised: false,
    muted: false,
    speaking: false,
    presence: "connected",
    ...fields,
  };
}
