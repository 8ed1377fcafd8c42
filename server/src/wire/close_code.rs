//! WebSocket close codes the server uses (RFC 6455; 4000–4999 are for applications).
//! Numbers only: which reason gets which code is decided by whoever closes.

pub const LEFT: u16 = 1000;
pub const POLICY: u16 = 1008;
pub const INTERNAL: u16 = 1011;
pub const SERVER_RESTARTING: u16 = 1012;
pub const TRY_AGAIN_LATER: u16 = 1013;
pub const TIMED_OUT: u16 = 4000;
pub const REMOVED: u16 = 4001;
pub const BANNED: u16 = 4003;
pub const REPLACED: u16 = 4004;
pub const ROOM_ENDED: u16 = 4005;
pub const TOO_SLOW: u16 = 4008;
/// The room lives on another node of the cluster; a `moved` message said where.
pub const MOVED: u16 = 4307;
pub const UNAUTHORIZED: u16 = 4401;
pub const REFUSED: u16 = 4403;
pub const NOT_FOUND: u16 = 4404;
