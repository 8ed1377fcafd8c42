//! One outbound audio slot of a listener: rewrites sequence numbers and timestamps so the slot
//! stays one continuous RTP stream while the speaker feeding it changes. Pure arithmetic on
//! values passed in: no clock, no packet bytes, no allocation.

/// Opus always runs a 48 kHz RTP clock, whatever the sample rate of the audio inside.
const TICKS_PER_MS: u64 = 48;

/// One 20 ms Opus frame: the least a switch advances the timestamp, so two sources never
/// share a timestamp on one slot.
pub const FRAME_TICKS: u32 = 960;

/// How far back (in input sequence numbers) a reordered packet may arrive and still be
/// forwarded: 64 packets is 1.28 s of 20 ms frames, far beyond any jitter buffer's patience.
const REORDER_WINDOW: u16 = 64;

/// After this many packets in a row from far behind the stream, the source is taken to have
/// restarted its sequence (same SSRC, new random start) and is re-anchored like a switch;
/// a single delayed straggler never gets this far.
const RESYNC_AFTER_TOO_OLD: u8 = 8;

/// A forward jump this large (20 s of 20 ms frames) is a restarted source, not loss: passing it
/// through would make the receiver NACK thousands of packets and trust a timestamp mapping
/// that no longer holds, so it is re-anchored like a switch instead.
const RESTART_GAP: u16 = 1000;

/// Bound on the timestamp leap of a switch, well below half the u32 space, so a slot idle for
/// hours still moves forwards in the receiver's wrap-around arithmetic.
const MAX_SWITCH_TICKS: u64 = 1 << 30;

/// Where a forwarded packet goes in the slot's stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rewritten {
    pub seq: u16,
    pub timestamp: u32,
    /// The first packet since the slot's source changed (or restarted): a talkspurt start, the
    /// place to set the RTP marker bit.
    pub switched: bool,
}

/// Why a packet is not forwarded on this slot; each is worth its own counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The packet's source is not the one the slot carries now (a straggler after a switch).
    NotSelected,
    /// Already forwarded.
    Duplicate,
    /// Older than the packet that started this source's turn on the slot: its output sequence
    /// number would collide with the previous source's.
    BeforeSwitch,
    /// Outside the reorder window.
    TooOld,
}

/// The rewriting state of one slot. The caller says which source the slot carries
/// (`set_source`); packets from that source are renumbered, all others are dropped.
#[derive(Clone, Copy, Debug)]
pub struct SlotRewriter {
    ssrc: u32,
    selected: Option<u32>,
    /// Mapping for the selected source, set by its first packet after it was selected.
    anchor: Option<Anchor>,
    last: LastOut,
}

#[derive(Clone, Copy, Debug)]
struct Anchor {
    seq_offset: u16,
    ts_offset: u32,
    /// Input timestamp of the packet that opened this turn: audio of the source from before
    /// it (RED's repeated frames) belongs to the slot's previous turn, not this one.
    first_timestamp: u32,
    highest_seq: u16,
    /// Bit `i` set: input `highest_seq - i` must not be forwarded (already was, or predates the
    /// anchor). Starts all ones so nothing before the anchor slips through.
    blocked: u64,
    /// How many input numbers behind `highest_seq` still belong to this turn, capped at the
    /// window; tells `BeforeSwitch` from `Duplicate`.
    turn_span: u16,
    too_old_streak: u8,
}

#[derive(Clone, Copy, Debug)]
enum LastOut {
    Nothing {
        first_seq: u16,
        first_timestamp: u32,
    },
    Sent {
        seq: u16,
        timestamp: u32,
        at_us: u64,
    },
}

impl SlotRewriter {
    /// `first_seq` and `first_timestamp` should be random (RFC 3550 §5.1); they are passed in
    /// so this type stays deterministic.
    pub fn new(ssrc: u32, first_seq: u16, first_timestamp: u32) -> Self {
        Self {
            ssrc,
            selected: None,
            anchor: None,
            last: LastOut::Nothing {
                first_seq,
                first_timestamp,
            },
        }
    }

    /// The slot's own SSRC, fixed for its lifetime.
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    pub fn source(&self) -> Option<u32> {
        self.selected
    }

    /// Chooses the source the slot carries: the SSRC of the speaker's packets, or any other
    /// number that names that stream uniquely in the room. Any change, even back
    /// to a source heard before, is a switch: the next packet of the new source continues the
    /// slot's numbering, and older packets of it are dropped.
    pub fn set_source(&mut self, source: Option<u32>) {
        if self.selected != source {
            self.selected = source;
            self.anchor = None;
        }
    }

    /// Whether audio of `source` at input `timestamp` belongs to the slot's current turn: true
    /// from the packet that opened the turn on. A RED packet may repeat earlier frames of its
    /// source; those from before the turn began must not be sent, because their rewritten
    /// timestamps fall where the slot carried its previous source (or its switch gap), and a
    /// receiver missing that audio would play the new speaker's in its place.
    pub fn in_turn(&self, source: u32, timestamp: u32) -> bool {
        self.selected == Some(source)
            && self
                .anchor
                .is_some_and(|a| timestamp.wrapping_sub(a.first_timestamp) as i32 >= 0)
    }

    /// The slot's RTP timestamp at `now_us`, extrapolated from the last packet that advanced
    /// the stream: what an RTCP sender report pairs with its NTP time. `None` before the
    /// first packet.
    pub fn timestamp_at(&self, now_us: u64) -> Option<u32> {
        match self.last {
            LastOut::Nothing { .. } => None,
            LastOut::Sent {
                timestamp, at_us, ..
            } => {
                let elapsed_ticks =
                    now_us.saturating_sub(at_us).saturating_mul(TICKS_PER_MS) / 1000;
                Some(timestamp.wrapping_add(elapsed_ticks as u32))
            }
        }
    }

    /// Maps one packet of `source` onto the slot. `now_us` is its arrival time on any
    /// monotonic microsecond scale.
    pub fn rewrite(
        &mut self,
        source: u32,
        seq: u16,
        timestamp: u32,
        now_us: u64,
    ) -> Result<Rewritten, DropReason> {
        if self.selected != Some(source) {
            return Err(DropReason::NotSelected);
        }
        let Some(anchor) = &mut self.anchor else {
            return Ok(self.start_turn(seq, timestamp, now_us));
        };
        let out = Rewritten {
            seq: seq.wrapping_add(anchor.seq_offset),
            timestamp: timestamp.wrapping_add(anchor.ts_offset),
            switched: false,
        };
        // Serial-number comparison (RFC 1982): half the space ahead, half behind.
        let ahead = seq.wrapping_sub(anchor.highest_seq) as i16;
        if ahead > 0 {
            let ahead = ahead as u16;
            if ahead >= RESTART_GAP {
                return Ok(self.start_turn(seq, timestamp, now_us));
            }
            anchor.blocked = if ahead >= REORDER_WINDOW {
                1
            } else {
                (anchor.blocked << ahead) | 1
            };
            anchor.highest_seq = seq;
            anchor.turn_span = anchor.turn_span.saturating_add(ahead).min(REORDER_WINDOW);
            anchor.too_old_streak = 0;
            self.last = LastOut::Sent {
                seq: out.seq,
                timestamp: out.timestamp,
                at_us: now_us,
            };
            return Ok(out);
        }
        let behind = ahead.unsigned_abs();
        if behind == 0 {
            return Err(DropReason::Duplicate);
        }
        if behind >= REORDER_WINDOW {
            anchor.too_old_streak += 1;
            if anchor.too_old_streak >= RESYNC_AFTER_TOO_OLD {
                return Ok(self.start_turn(seq, timestamp, now_us));
            }
            return Err(DropReason::TooOld);
        }
        let bit = 1u64 << behind;
        if anchor.blocked & bit != 0 {
            return Err(if behind > anchor.turn_span {
                DropReason::BeforeSwitch
            } else {
                DropReason::Duplicate
            });
        }
        // A late packet fills its hole; the stream's head and timing stay where they are.
        anchor.blocked |= bit;
        anchor.too_old_streak = 0;
        Ok(out)
    }

    /// Anchors the selected source so this packet directly follows the slot's last one.
    fn start_turn(&mut self, seq: u16, timestamp: u32, now_us: u64) -> Rewritten {
        let (out_seq, out_timestamp) = match self.last {
            LastOut::Nothing {
                first_seq,
                first_timestamp,
            } => (first_seq, first_timestamp),
            LastOut::Sent {
                seq,
                timestamp,
                at_us,
            } => (
                seq.wrapping_add(1),
                timestamp.wrapping_add(switch_advance(now_us.saturating_sub(at_us))),
            ),
        };
        self.anchor = Some(Anchor {
            seq_offset: out_seq.wrapping_sub(seq),
            ts_offset: out_timestamp.wrapping_sub(timestamp),
            first_timestamp: timestamp,
            highest_seq: seq,
            blocked: u64::MAX,
            turn_span: 0,
            too_old_streak: 0,
        });
        self.last = LastOut::Sent {
            seq: out_seq,
            timestamp: out_timestamp,
            at_us: now_us,
        };
        Rewritten {
            seq: out_seq,
            timestamp: out_timestamp,
            switched: true,
        }
    }
}

/// The receiver's jitter buffer compares timestamp progress with arrival times; advancing by
/// the wall time that passed makes a switch look like an ordinary pause (as after DTX).
fn switch_advance(elapsed_us: u64) -> u32 {
    let ticks = elapsed_us.saturating_mul(TICKS_PER_MS) / 1000;
    ticks.clamp(u64::from(FRAME_TICKS), MAX_SWITCH_TICKS) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: u32 = 0xAAAA_0001;
    const B: u32 = 0xBBBB_0002;
    const SLOT_SSRC: u32 = 0x5107_0001;

    #[derive(Clone, Copy, Debug)]
    enum Step {
        Select(Option<u32>),
        Packet {
            source: u32,
            seq: u16,
            ts: u32,
            at_ms: u64,
            expect: Result<Rewritten, DropReason>,
        },
    }

    fn select(source: u32) -> Step {
        Step::Select(Some(source))
    }

    fn pkt(
        source: u32,
        seq: u16,
        ts: u32,
        at_ms: u64,
        expect: Result<Rewritten, DropReason>,
    ) -> Step {
        Step::Packet {
            source,
            seq,
            ts,
            at_ms,
            expect,
        }
    }

    fn fwd(seq: u16, timestamp: u32) -> Result<Rewritten, DropReason> {
        Ok(Rewritten {
            seq,
            timestamp,
            switched: false,
        })
    }

    fn switch(seq: u16, timestamp: u32) -> Result<Rewritten, DropReason> {
        Ok(Rewritten {
            seq,
            timestamp,
            switched: true,
        })
    }

    fn drop(reason: DropReason) -> Result<Rewritten, DropReason> {
        Err(reason)
    }

    use DropReason::{BeforeSwitch, Duplicate, NotSelected, TooOld};

    const F: u32 = FRAME_TICKS;
    /// Input timestamps of A start here, B's far away, so offsets are visible.
    const TA: u32 = 7_000;
    const TB: u32 = 900_000;
    /// Output starts at (1000, 50_000) unless a case says otherwise.
    const T0: u32 = 50_000;

    struct Case {
        name: &'static str,
        first: (u16, u32),
        steps: Vec<Step>,
    }

    fn case(name: &'static str, steps: Vec<Step>) -> Case {
        Case {
            name,
            first: (1000, T0),
            steps,
        }
    }

    fn cases() -> Vec<Case> {
        vec![
            case(
                "steady stream",
                vec![
                    select(A),
                    pkt(A, 10, TA, 0, switch(1000, T0)),
                    pkt(A, 11, TA + F, 20, fwd(1001, T0 + F)),
                    pkt(A, 12, TA + 2 * F, 40, fwd(1002, T0 + 2 * F)),
                    pkt(A, 13, TA + 3 * F, 60, fwd(1003, T0 + 3 * F)),
                ],
            ),
            case(
                "loss gap stays a gap",
                vec![
                    select(A),
                    pkt(A, 10, TA, 0, switch(1000, T0)),
                    pkt(A, 11, TA + F, 20, fwd(1001, T0 + F)),
                    pkt(A, 14, TA + 4 * F, 80, fwd(1004, T0 + 4 * F)),
                    pkt(A, 15, TA + 5 * F, 100, fwd(1005, T0 + 5 * F)),
                ],
            ),
            case(
                "reorder within the window maps to its own place",
                vec![
                    select(A),
                    pkt(A, 10, TA, 0, switch(1000, T0)),
                    pkt(A, 12, TA + 2 * F, 40, fwd(1002, T0 + 2 * F)),
                    pkt(A, 11, TA + F, 41, fwd(1001, T0 + F)),
                    pkt(A, 13, TA + 3 * F, 60, fwd(1003, T0 + 3 * F)),
                    // After a burst of loss: 59 behind the head is in the window, 65 is not.
                    pkt(A, 73, TA + 63 * F, 1260, fwd(1063, T0 + 63 * F)),
                    pkt(A, 14, TA + 4 * F, 1261, fwd(1004, T0 + 4 * F)),
                    pkt(A, 80, TA + 70 * F, 1400, fwd(1070, T0 + 70 * F)),
                    pkt(A, 15, TA + 5 * F, 1401, drop(TooOld)),
                    pkt(A, 17, TA + 7 * F, 1402, fwd(1007, T0 + 7 * F)),
                ],
            ),
            case(
                "duplicates dropped, of the head and of a late packet",
                vec![
                    select(A),
                    pkt(A, 10, TA, 0, switch(1000, T0)),
                    pkt(A, 10, TA, 1, drop(Duplicate)),
                    pkt(A, 12, TA + 2 * F, 40, fwd(1002, T0 + 2 * F)),
                    pkt(A, 11, TA + F, 41, fwd(1001, T0 + F)),
                    pkt(A, 11, TA + F, 42, drop(Duplicate)),
                    pkt(A, 12, TA + 2 * F, 43, drop(Duplicate)),
                ],
            ),
            case(
                "input sequence wraps",
                vec![
                    select(A),
                    pkt(A, 65534, TA, 0, switch(1000, T0)),
                    pkt(A, 65535, TA + F, 20, fwd(1001, T0 + F)),
                    pkt(A, 0, TA + 2 * F, 40, fwd(1002, T0 + 2 * F)),
                    pkt(A, 2, TA + 4 * F, 80, fwd(1004, T0 + 4 * F)),
                    pkt(A, 1, TA + 3 * F, 81, fwd(1003, T0 + 3 * F)),
                    pkt(A, 65535, TA + F, 82, drop(Duplicate)),
                ],
            ),
            Case {
                name: "output sequence wraps",
                first: (65534, T0),
                steps: vec![
                    select(A),
                    pkt(A, 10, TA, 0, switch(65534, T0)),
                    pkt(A, 11, TA + F, 20, fwd(65535, T0 + F)),
                    pkt(A, 12, TA + 2 * F, 40, fwd(0, T0 + 2 * F)),
                    pkt(A, 13, TA + 3 * F, 60, fwd(1, T0 + 3 * F)),
                ],
            },
            case(
                "input timestamp wraps",
                vec![
                    select(A),
                    pkt(A, 10, u32::MAX - F + 1, 0, switch(1000, T0)),
                    pkt(A, 11, 0, 20, fwd(1001, T0 + F)),
                    pkt(A, 12, F, 40, fwd(1002, T0 + 2 * F)),
                ],
            ),
            Case {
                name: "output timestamp wraps",
                first: (1000, u32::MAX - 100),
                steps: vec![
                    select(A),
                    pkt(A, 10, TA, 0, switch(1000, u32::MAX - 100)),
                    pkt(A, 11, TA + F, 20, fwd(1001, F - 101)),
                    pkt(A, 12, TA + 2 * F, 40, fwd(1002, 2 * F - 101)),
                ],
            },
            case(
                "switch A to B to A: continuous numbers, wall-time timestamps, stragglers dropped",
                vec![
                    select(A),
                    pkt(A, 10, TA, 0, switch(1000, T0)),
                    pkt(A, 11, TA + F, 20, fwd(1001, T0 + F)),
                    select(B),
                    pkt(A, 12, TA + 2 * F, 40, drop(NotSelected)),
                    // 30 ms after A's last packet: 30 × 48 ticks.
                    pkt(B, 500, TB, 50, switch(1002, T0 + F + 1440)),
                    pkt(B, 501, TB + F, 70, fwd(1003, T0 + F + 1440 + F)),
                    select(A),
                    pkt(B, 502, TB + 2 * F, 90, drop(NotSelected)),
                    // A was quiet meanwhile and comes back: a switch, 230 ms after B's last.
                    pkt(
                        A,
                        25,
                        TA + 15 * F,
                        300,
                        switch(1004, T0 + 2 * F + 1440 + 230 * 48),
                    ),
                    pkt(A, 12, TA + 2 * F, 301, drop(BeforeSwitch)),
                    pkt(
                        A,
                        26,
                        TA + 16 * F,
                        320,
                        fwd(1005, T0 + 3 * F + 1440 + 230 * 48),
                    ),
                ],
            ),
            case(
                "switch advances at least one frame",
                vec![
                    select(A),
                    pkt(A, 10, TA, 100, switch(1000, T0)),
                    select(B),
                    pkt(B, 500, TB, 105, switch(1001, T0 + F)),
                    select(A),
                    // An arrival time earlier than the last one must not move time backwards.
                    pkt(A, 11, TA + F, 50, switch(1002, T0 + 2 * F)),
                ],
            ),
            case(
                "switch after a long idle slot advances by the idle time",
                vec![
                    select(A),
                    pkt(A, 10, TA, 0, switch(1000, T0)),
                    select(B),
                    pkt(B, 500, TB, 10_000, switch(1001, T0 + 480_000)),
                ],
            ),
            Case {
                name: "switch right at a wrap of both the slot and the new source",
                first: (65535, u32::MAX - 100),
                steps: vec![
                    select(A),
                    pkt(A, 10, TA, 0, switch(65535, u32::MAX - 100)),
                    select(B),
                    pkt(B, 65535, u32::MAX - 9, 20, switch(0, F - 101)),
                    pkt(B, 0, F - 10, 40, fwd(1, 2 * F - 101)),
                    pkt(B, 1, 2 * F - 10, 60, fwd(2, 3 * F - 101)),
                ],
            },
            case(
                "a late packet from before the switch point of the new source is dropped",
                vec![
                    select(A),
                    pkt(A, 10, TA, 0, switch(1000, T0)),
                    select(B),
                    pkt(B, 500, TB, 20, switch(1001, T0 + F)),
                    pkt(B, 499, TB - F, 21, drop(BeforeSwitch)),
                    pkt(B, 502, TB + 2 * F, 60, fwd(1003, T0 + 3 * F)),
                    pkt(B, 501, TB + F, 61, fwd(1002, T0 + 2 * F)),
                ],
            ),
            case(
                "DTX silence passes through unchanged",
                vec![
                    select(A),
                    pkt(A, 10, TA, 0, switch(1000, T0)),
                    pkt(A, 11, TA + F, 20, fwd(1001, T0 + F)),
                    // 400 ms of DTX: one packet, twenty frames of timestamp.
                    pkt(A, 12, TA + 21 * F, 420, fwd(1002, T0 + 21 * F)),
                    pkt(A, 13, TA + 22 * F, 440, fwd(1003, T0 + 22 * F)),
                ],
            ),
            case(
                "a very old packet is dropped",
                vec![
                    select(A),
                    pkt(A, 10, TA, 0, switch(1000, T0)),
                    pkt(A, 200, TA + 190 * F, 3800, fwd(1190, T0 + 190 * F)),
                    pkt(A, 136, TA + 126 * F, 3801, drop(TooOld)),
                    pkt(A, 137, TA + 127 * F, 3802, fwd(1127, T0 + 127 * F)),
                    pkt(A, 40000, 0, 3803, drop(TooOld)),
                    pkt(A, 201, TA + 191 * F, 3820, fwd(1191, T0 + 191 * F)),
                ],
            ),
            case(
                "a source that restarts its numbering far behind is re-anchored",
                vec![
                    select(A),
                    pkt(A, 1000, TA, 0, switch(1000, T0)),
                    pkt(A, 100, TB, 20, drop(TooOld)),
                    pkt(A, 101, TB + F, 40, drop(TooOld)),
                    pkt(A, 102, TB + 2 * F, 60, drop(TooOld)),
                    pkt(A, 103, TB + 3 * F, 80, drop(TooOld)),
                    pkt(A, 104, TB + 4 * F, 100, drop(TooOld)),
                    pkt(A, 105, TB + 5 * F, 120, drop(TooOld)),
                    pkt(A, 106, TB + 6 * F, 140, drop(TooOld)),
                    pkt(A, 107, TB + 7 * F, 160, switch(1001, T0 + 160 * 48)),
                    pkt(A, 108, TB + 8 * F, 180, fwd(1002, T0 + 160 * 48 + F)),
                ],
            ),
            case(
                "a jump far ahead is a restart, not a loss gap",
                vec![
                    select(A),
                    pkt(A, 10, TA, 0, switch(1000, T0)),
                    pkt(A, 1008, TA + 998 * F, 20, fwd(1998, T0 + 998 * F)),
                    pkt(A, 2008, TB, 40, switch(1999, T0 + 998 * F + F)),
                    pkt(A, 2009, TB + F, 60, fwd(2000, T0 + 999 * F + F)),
                ],
            ),
            case(
                "a deselected slot forwards nothing; reselecting is a switch",
                vec![
                    pkt(A, 10, TA, 0, drop(NotSelected)),
                    select(A),
                    pkt(A, 11, TA + F, 20, switch(1000, T0)),
                    Step::Select(None),
                    pkt(A, 12, TA + 2 * F, 40, drop(NotSelected)),
                    select(A),
                    pkt(A, 13, TA + 3 * F, 60, switch(1001, T0 + 40 * 48)),
                    pkt(A, 12, TA + 2 * F, 61, drop(BeforeSwitch)),
                ],
            ),
            case(
                "selecting the current source again changes nothing",
                vec![
                    select(A),
                    pkt(A, 10, TA, 0, switch(1000, T0)),
                    select(A),
                    pkt(A, 11, TA + F, 20, fwd(1001, T0 + F)),
                ],
            ),
        ]
    }

    #[test]
    fn table() {
        for case in cases() {
            let mut slot = SlotRewriter::new(SLOT_SSRC, case.first.0, case.first.1);
            for (i, step) in case.steps.iter().enumerate() {
                match *step {
                    Step::Select(source) => slot.set_source(source),
                    Step::Packet {
                        source,
                        seq,
                        ts,
                        at_ms,
                        expect,
                    } => {
                        let got = slot.rewrite(source, seq, ts, at_ms * 1000);
                        assert_eq!(got, expect, "case {:?}, step {i}: {step:?}", case.name);
                    }
                }
            }
            assert_eq!(slot.ssrc(), SLOT_SSRC);
        }
    }

    #[test]
    fn repeated_frames_belong_to_the_turn_only_from_its_first_packet() {
        // (what happens, then: for each (source, input timestamp), may a RED block of it go out)
        enum Do {
            Select(Option<u32>),
            Packet(u32, u16, u32, u64),
        }
        use Do::{Packet, Select};
        type Row = (Do, &'static [(u32, u32, bool)]);
        let rows: Vec<Row> = vec![
            // Nothing selected, nothing anchored.
            (Select(None), &[(A, TA, false)]),
            // Selected but no packet yet: the turn has not begun.
            (Select(Some(A)), &[(A, TA, false)]),
            // A's turn opens at TA + 5F: earlier frames of A are from before it.
            (
                Packet(A, 15, TA + 5 * F, 100),
                &[
                    (A, TA + 5 * F, true),
                    (A, TA + 4 * F, false),
                    (A, TA + 3 * F, false),
                    (B, TB, false),
                ],
            ),
            (
                Packet(A, 16, TA + 6 * F, 120),
                &[(A, TA + 5 * F, true), (A, TA + 4 * F, false)],
            ),
            (
                Packet(A, 17, TA + 7 * F, 140),
                &[(A, TA + 6 * F, true), (A, TA + 5 * F, true)],
            ),
            // A switch to B: nothing of A goes out any more, B's turn opens at its first packet.
            (Select(Some(B)), &[(A, TA + 7 * F, false), (B, TB, false)]),
            (
                Packet(B, 500, TB, 160),
                &[(B, TB, true), (B, TB - F, false), (A, TA + 7 * F, false)],
            ),
            // Back to A: a new turn, even for frames A sent during its earlier one.
            (Select(Some(A)), &[]),
            (
                Packet(A, 30, TA + 20 * F, 400),
                &[
                    (A, TA + 20 * F, true),
                    (A, TA + 19 * F, false),
                    (A, TA + 6 * F, false),
                ],
            ),
        ];
        let mut slot = SlotRewriter::new(SLOT_SSRC, 1000, T0);
        for (i, (step, checks)) in rows.iter().enumerate() {
            match *step {
                Select(source) => slot.set_source(source),
                Packet(source, seq, ts, at_ms) => {
                    assert!(
                        slot.rewrite(source, seq, ts, at_ms * 1000).is_ok(),
                        "row {i}"
                    );
                }
            }
            for &(source, ts, expected) in *checks {
                assert_eq!(
                    slot.in_turn(source, ts),
                    expected,
                    "row {i}: {source:x} at {ts}"
                );
            }
        }
        // Across the input timestamp wrap.
        let mut slot = SlotRewriter::new(SLOT_SSRC, 1000, T0);
        slot.set_source(Some(A));
        assert!(slot.rewrite(A, 1, u32::MAX - F + 1, 0).is_ok());
        assert!(slot.in_turn(A, 0));
        assert!(slot.in_turn(A, u32::MAX - F + 1));
        assert!(!slot.in_turn(A, u32::MAX - 2 * F + 1));
    }

    #[test]
    fn sender_report_timestamp_follows_wall_time_from_the_last_packet() {
        let mut slot = SlotRewriter::new(SLOT_SSRC, 1000, u32::MAX - 100);
        assert_eq!(slot.timestamp_at(0), None);
        slot.set_source(Some(A));
        assert!(slot.rewrite(A, 10, TA, 1_000_000).is_ok());
        assert!(slot.rewrite(A, 9, TA - F, 1_030_000).is_err());
        assert_eq!(slot.timestamp_at(1_000_000), Some(u32::MAX - 100));
        assert_eq!(slot.timestamp_at(1_100_000), Some(4800 - 101), "wraps");
        assert_eq!(
            slot.timestamp_at(999_000),
            Some(u32::MAX - 100),
            "never backwards"
        );
    }

    #[test]
    fn output_never_repeats_a_sequence_number_under_random_input() {
        // Whatever arrives (reorders, duplicates, switches, garbage numbers), no output sequence
        // number may be used twice in a stretch short enough for a receiver to confuse them.
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut slot = SlotRewriter::new(SLOT_SSRC, 65000, 0);
        let mut heads = [0u16; 2];
        let mut sent: Vec<u16> = Vec::new();
        let mut now_us = 0;
        for _ in 0..20_000 {
            let r = next();
            now_us += r % 30_000;
            let source_index = (r >> 20) as usize % 2;
            if r.is_multiple_of(97) {
                slot.set_source(Some([A, B][source_index]));
            }
            let seq = match (r >> 8) % 10 {
                0 => (r >> 24) as u16,
                1..=3 => heads[source_index].wrapping_sub((r >> 24) as u16 % 70),
                _ => {
                    heads[source_index] =
                        heads[source_index].wrapping_add(1 + (r >> 24) as u16 % 3);
                    heads[source_index]
                }
            };
            let source = [A, B][source_index];
            if let Ok(out) = slot.rewrite(source, seq, 0, now_us) {
                let mut recent = sent.iter().rev().take(200);
                assert!(
                    recent.all(|&earlier| earlier != out.seq),
                    "output {} reused for {source:x}/{seq}",
                    out.seq
                );
                sent.push(out.seq);
            }
        }
        assert!(sent.len() > 5_000, "too few forwarded: {}", sent.len());
    }
}
