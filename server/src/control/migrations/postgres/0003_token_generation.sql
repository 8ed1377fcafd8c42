-- Stoa control-plane schema, version 3, PostgreSQL dialect (see ../0003_token_generation.sql):
-- token generations. Every redemption of an invite by an identity starts a new generation, and
-- its session token carries it; a live role records the generation current when the room
-- decided it.

ALTER TABLE identities ADD COLUMN token_generation BIGINT NOT NULL DEFAULT 0;
ALTER TABLE identities ADD COLUMN live_role_generation BIGINT NOT NULL DEFAULT 0;
