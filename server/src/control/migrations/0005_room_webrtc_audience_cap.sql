-- Stoa control-plane schema, version 5: a room's own WebRTC audience cap. Listeners who join
-- past it hear the room over its broadcast (LL-HLS) instead; NULL means the server's
-- `[broadcast] webrtc_audience_cap`.

ALTER TABLE rooms ADD COLUMN webrtc_audience_cap INTEGER;
