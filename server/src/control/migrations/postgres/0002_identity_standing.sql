-- Stoa control-plane schema, version 2, PostgreSQL dialect (see ../0002_identity_standing.sql):
-- what a live room decided about an identity, so that a session token issued before the
-- decision cannot undo it (even after the room restarted).

-- The role the identity holds now, when a live room changed it (NULL: the invite's role).
ALTER TABLE identities ADD COLUMN live_role TEXT
    CHECK (live_role IS NULL OR live_role IN ('listener', 'speaker', 'moderator'));
-- When the identity was last removed from the room; older tokens cannot rejoin.
ALTER TABLE identities ADD COLUMN removed_at BIGINT;
