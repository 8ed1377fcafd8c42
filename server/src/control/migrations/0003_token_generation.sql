-- Stoa control-plane schema, version 3: token generations. Every redemption of an invite by an
-- identity starts a new generation, and its session token carries it; a live role records the
-- generation current when the room decided it. A token whose generation is not newer than the
-- live role's acts with the live role, so redeeming any link again cannot give an older token
-- back a role the room took away.

ALTER TABLE identities ADD COLUMN token_generation INTEGER NOT NULL DEFAULT 0;
ALTER TABLE identities ADD COLUMN live_role_generation INTEGER NOT NULL DEFAULT 0;
