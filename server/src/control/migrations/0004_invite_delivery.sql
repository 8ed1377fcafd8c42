-- Stoa control-plane schema, version 4: how an invite's people hear the room. `webrtc` (the
-- default, and every invite made before) or `broadcast`: the stage mixed once per room and
-- served as LL-HLS. Only listener invites may be broadcast ones.

ALTER TABLE invites ADD COLUMN delivery TEXT NOT NULL DEFAULT 'webrtc'
    CHECK (delivery = 'webrtc' OR (delivery = 'broadcast' AND role = 'listener'));
