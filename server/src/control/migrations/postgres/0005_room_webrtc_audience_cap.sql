-- Stoa control-plane schema, version 5, PostgreSQL dialect (see
-- ../0005_room_webrtc_audience_cap.sql): a room's own WebRTC audience cap. Listeners who join
-- past it hear the room over its broadcast (LL-HLS) instead; NULL means the server's
-- `[broadcast] webrtc_audience_cap`.

ALTER TABLE rooms ADD COLUMN webrtc_audience_cap BIGINT;
