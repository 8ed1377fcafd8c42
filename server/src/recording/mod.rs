//! Recordings: a room's broadcast mix written to an Ogg Opus file as it happens.

pub mod ogg;
