//! The worker's counters, resolved once from the metric families (a counter per drop reason,
//! labelled with the worker) so the packet path only increments atomics. Names are the
//! `stoa_media_*` metrics of `docs/operations.md`; nothing here decides anything.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use crate::metrics::{DropLabels, MediaMetrics, WorkerLabels};

/// What the core counts: input, forwarding, and why a packet went no further.
pub(super) struct Counters {
    pub datagrams_in: Counter,
    pub bytes_in: Counter,
    pub rtp_in: Counter,
    pub red_in: Counter,
    pub forwarded: Counter,
    pub red_out: Counter,
    pub relay_out: Counter,
    pub relay_in: Counter,
    pub connections: Gauge,
    pub drops: Drops,
}

/// `stoa_media_dropped_total{reason}`: one counter per reason.
pub(super) struct Drops {
    /// No connection is reached at the sender's address (or by its ICE username).
    pub unroutable: Counter,
    /// Neither STUN, DTLS, RTP nor RTCP.
    pub malformed: Counter,
    /// Larger than any datagram of ours may be.
    pub oversized: Counter,
    /// RTP from a connection answered without a receiving path (a listener).
    pub no_send_path: Counter,
    /// RTP from a speaker the room does not let be heard now.
    pub not_allowed: Counter,
    pub unknown_ssrc: Counter,
    pub bad_red: Counter,
    /// Refused by the connection (`rtc`), by a failed integrity check, or a stream too many.
    pub rejected: Counter,
    /// Another worker's fan-out queue was full.
    pub fanout_full: Counter,
    /// A listener's copy could not be written.
    pub forward_failed: Counter,
    /// A duplicate, or a straggler from before a slot switch.
    pub stale: Counter,
    /// `rtc` panicked on a connection, which was closed.
    pub panicked: Counter,
    /// A datagram on a relay link from another node that was not from the granted address,
    /// did not authenticate, was replayed, or did not read (`media::relay::Refused`).
    pub relay_refused: Counter,
    /// A relayed packet that would not fit in a datagram.
    pub relay_too_big: Counter,
}

/// What the shell counts: output and the ICE-TCP streams.
pub(super) struct WireCounters {
    pub datagrams_out: Counter,
    pub bytes_out: Counter,
    pub send_calls: Counter,
    pub send_failed: Counter,
    pub rejected: Counter,
    pub tcp_frames_in: Counter,
    pub tcp_streams: Gauge,
}

fn labels(index: usize) -> WorkerLabels {
    WorkerLabels {
        worker: index.to_string(),
    }
}

fn dropped(m: &MediaMetrics, index: usize, reason: &str) -> Counter {
    m.dropped
        .get_or_create(&DropLabels {
            worker: index.to_string(),
            reason: reason.to_owned(),
        })
        .clone()
}

impl Counters {
    pub fn new(m: &MediaMetrics, index: usize) -> Self {
        let w = labels(index);
        let drop = |reason: &str| dropped(m, index, reason);
        Self {
            datagrams_in: m.datagrams_in.get_or_create(&w).clone(),
            bytes_in: m.bytes_in.get_or_create(&w).clone(),
            rtp_in: m.rtp_in.get_or_create(&w).clone(),
            red_in: m.rtp_red_in.get_or_create(&w).clone(),
            forwarded: m.rtp_forwarded.get_or_create(&w).clone(),
            red_out: m.rtp_red_out.get_or_create(&w).clone(),
            relay_out: m.relay_out.get_or_create(&w).clone(),
            relay_in: m.relay_in.get_or_create(&w).clone(),
            connections: m.connections.get_or_create(&w).clone(),
            drops: Drops {
                unroutable: drop("unroutable"),
                malformed: drop("malformed"),
                oversized: drop("oversized"),
                no_send_path: drop("no_send_path"),
                not_allowed: drop("not_allowed"),
                unknown_ssrc: drop("unknown_ssrc"),
                bad_red: drop("bad_red"),
                rejected: drop("rejected"),
                fanout_full: drop("fanout_full"),
                forward_failed: drop("forward_failed"),
                stale: drop("stale"),
                panicked: drop("panicked"),
                relay_refused: drop("relay_refused"),
                relay_too_big: drop("relay_too_big"),
            },
        }
    }
}

impl WireCounters {
    pub fn new(m: &MediaMetrics, index: usize) -> Self {
        let w = labels(index);
        Self {
            datagrams_out: m.datagrams_out.get_or_create(&w).clone(),
            bytes_out: m.bytes_out.get_or_create(&w).clone(),
            send_calls: m.send_calls.get_or_create(&w).clone(),
            send_failed: dropped(m, index, "send_failed"),
            rejected: dropped(m, index, "rejected"),
            tcp_frames_in: m.tcp_frames_in.get_or_create(&w).clone(),
            tcp_streams: m.tcp_streams.get_or_create(&w).clone(),
        }
    }
}
