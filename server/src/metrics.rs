//! Prometheus metrics the server exports at `/metrics`: counters and gauges registered once
//! at start and updated with atomics, plus process and runtime gauges read when rendering.
//! Rendering only; no HTTP here.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    /// The route template (`/api/v1/rooms/{room}`), never the raw path, to bound cardinality.
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabels {
    pub worker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    pub worker: String,
    pub reason: String,
}

/// The media path's metrics. Workers take their own counters out of the families once at
/// start, so counting a packet is one atomic add, never a lookup.
#[derive(Clone)]
pub struct MediaMetrics {
    pub datagrams_in: Family<WorkerLabels, Counter>,
    pub bytes_in: Family<WorkerLabels, Counter>,
    pub datagrams_out: Family<WorkerLabels, Counter>,
    pub bytes_out: Family<WorkerLabels, Counter>,
    pub send_calls: Family<WorkerLabels, Counter>,
    pub rtp_in: Family<WorkerLabels, Counter>,
    pub rtp_red_in: Family<WorkerLabels, Counter>,
    pub rtp_red_out: Family<WorkerLabels, Counter>,
    pub rtp_forwarded: Family<WorkerLabels, Counter>,
    /// Datagrams sent to other nodes of the cluster (one per speaker packet, or end of a
    /// source, and node).
    pub relay_out: Family<WorkerLabels, Counter>,
    /// Speakers' packets taken from other nodes.
    pub relay_in: Family<WorkerLabels, Counter>,
    pub dropped: Family<DropLabels, Counter>,
    pub connections: Family<WorkerLabels, Gauge>,
    /// Datagrams that arrived framed on an ICE-TCP stream (also counted in `datagrams_in`).
    pub tcp_frames_in: Family<WorkerLabels, Counter>,
    /// ICE-TCP streams open now.
    pub tcp_streams: Family<WorkerLabels, Gauge>,
    /// From a speaker's packet arriving to its last copy being handed to the kernel.
    pub forward_seconds: Histogram,
    /// From the answer to the connection's DTLS being up.
    pub connect_seconds: Histogram,
    pub rr_fraction_lost: Histogram,
    pub rr_jitter_seconds: Histogram,
    pub rtt_seconds: Histogram,
}

impl Default for MediaMetrics {
    fn default() -> Self {
        Self {
            datagrams_in: Family::default(),
            bytes_in: Family::default(),
            datagrams_out: Family::default(),
            bytes_out: Family::default(),
            send_calls: Family::default(),
            rtp_in: Family::default(),
            rtp_red_in: Family::default(),
            rtp_red_out: Family::default(),
            rtp_forwarded: Family::default(),
            relay_out: Family::default(),
            relay_in: Family::default(),
            dropped: Family::default(),
            connections: Family::default(),
            tcp_frames_in: Family::default(),
            tcp_streams: Family::default(),
            // 5 µs .. ~80 ms
            forward_seconds: Histogram::new(exponential_buckets(5e-6, 2.0, 15)),
            // 1 ms .. ~16 s
            connect_seconds: Histogram::new(exponential_buckets(1e-3, 2.0, 15)),
            rr_fraction_lost: Histogram::new([0.0, 0.001, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]),
            // 0.1 ms .. ~1.6 s
            rr_jitter_seconds: Histogram::new(exponential_buckets(1e-4, 2.0, 15)),
            rtt_seconds: Histogram::new(exponential_buckets(1e-4, 2.0, 15)),
        }
    }
}

impl MediaMetrics {
    fn register(&self, r: &mut Registry) {
        let r = r.sub_registry_with_prefix("media");
        r.register(
            "datagrams_in",
            "UDP datagrams received",
            self.datagrams_in.clone(),
        );
        r.register("bytes_in", "UDP bytes received", self.bytes_in.clone());
        r.register(
            "datagrams_out",
            "UDP datagrams sent",
            self.datagrams_out.clone(),
        );
        r.register("bytes_out", "UDP bytes sent", self.bytes_out.clone());
        r.register(
            "send_calls",
            "Send system calls (batched)",
            self.send_calls.clone(),
        );
        r.register(
            "rtp_in",
            "RTP packets accepted from speakers",
            self.rtp_in.clone(),
        );
        r.register(
            "rtp_red_in",
            "Of those, RED (RFC 2198) packets",
            self.rtp_red_in.clone(),
        );
        r.register(
            "rtp_forwarded",
            "RTP packets written to listeners (one per packet and listener)",
            self.rtp_forwarded.clone(),
        );
        r.register(
            "rtp_red_out",
            "Of those, RED packets (to listeners that negotiated it)",
            self.rtp_red_out.clone(),
        );
        r.register(
            "relay_out",
            "Datagrams sent to other nodes that serve a room: one per speaker packet (or end of a source) and node",
            self.relay_out.clone(),
        );
        r.register(
            "relay_in",
            "Speakers' packets taken from other nodes that serve their room",
            self.relay_in.clone(),
        );
        r.register(
            "dropped",
            "Datagrams and packets dropped, by reason",
            self.dropped.clone(),
        );
        r.register(
            "connections",
            "WebRTC connections",
            self.connections.clone(),
        );
        r.register(
            "tcp_frames_in",
            "Datagrams received framed on ICE-TCP streams (also in datagrams_in)",
            self.tcp_frames_in.clone(),
        );
        r.register(
            "tcp_streams",
            "ICE-TCP streams open",
            self.tcp_streams.clone(),
        );
        r.register(
            "forward_seconds",
            "Time from a speaker's packet arriving to its copies being sent",
            self.forward_seconds.clone(),
        );
        r.register(
            "connect_seconds",
            "Time from the answer to the connection being up",
            self.connect_seconds.clone(),
        );
        r.register(
            "rr_fraction_lost",
            "Loss reported by listeners' receiver reports",
            self.rr_fraction_lost.clone(),
        );
        r.register(
            "rr_jitter_seconds",
            "Jitter reported by listeners' receiver reports",
            self.rr_jitter_seconds.clone(),
        );
        r.register(
            "rtt_seconds",
            "Round-trip time from receiver reports",
            self.rtt_seconds.clone(),
        );
    }
}

/// What the process and its async runtime hold right now, read at each render (from the
/// current tokio runtime and, on Linux, `/proc/self`), so leaks show up as gauges that do not
/// come back down.
#[derive(Clone, Default)]
pub struct ProcessMetrics {
    pub alive_tasks: Gauge,
    pub open_fds: Gauge,
    pub threads: Gauge,
    pub resident_memory_bytes: Gauge,
}

impl ProcessMetrics {
    fn register(&self, r: &mut Registry) {
        r.sub_registry_with_prefix("runtime").register(
            "alive_tasks",
            "Tasks alive in the server's tokio runtime",
            self.alive_tasks.clone(),
        );
        if !proc_self_readable() {
            return;
        }
        let r = r.sub_registry_with_prefix("process");
        r.register(
            "open_fds",
            "Open file descriptors (sockets included)",
            self.open_fds.clone(),
        );
        r.register("threads", "Operating system threads", self.threads.clone());
        r.register(
            "resident_memory_bytes",
            "Resident set size",
            self.resident_memory_bytes.clone(),
        );
    }

    /// Reads the current values. Called from inside the runtime (the `/metrics` handler).
    fn refresh(&self) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            self.alive_tasks
                .set(runtime.metrics().num_alive_tasks() as i64);
        }
        if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
            // Listing the folder opens a descriptor of its own, which the listing includes.
            self.open_fds.set(entries.count().saturating_sub(1) as i64);
        }
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            if let Some(threads) = status_field(&status, "Threads:") {
                self.threads.set(threads);
            }
            if let Some(kib) = status_field(&status, "VmRSS:") {
                self.resident_memory_bytes.set(kib * 1024);
            }
        }
    }
}

fn proc_self_readable() -> bool {
    std::path::Path::new("/proc/self/status").exists()
}

/// The first number after `name` in `/proc/self/status` (`VmRSS:   1234 kB`).
fn status_field(status: &str, name: &str) -> Option<i64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The broadcast tier's mixes (`crate::broadcast`) and what recordings lose of them.
#[derive(Clone, Default)]
pub struct BroadcastMetrics {
    /// Rooms mixed now (for HLS, a recording or clips).
    pub mixes: Gauge,
    /// 20 ms frames mixed and encoded, all rooms.
    pub frames: Counter,
    /// 20 ms of a voice made up by Opus concealment in a mix: a lost or late packet.
    pub concealed: Counter,
    /// Speakers' packets that came after their tick had passed (not in the mix).
    pub late: Counter,
    /// Speakers' packets the media workers had for a mix whose queue was full.
    pub tap_dropped: Counter,
    /// Mixed frames a recording's writer had no room for (the disk is seconds behind).
    pub recording_frames_dropped: Counter,
    /// Speakers' packets a recording with speaker tracks had no room for.
    pub track_packets_dropped: Counter,
}

impl BroadcastMetrics {
    fn register(&self, r: &mut Registry) {
        let r = r.sub_registry_with_prefix("broadcast");
        r.register(
            "mixes",
            "Rooms mixed now (for HLS, a recording or clips)",
            self.mixes.clone(),
        );
        r.register(
            "frames",
            "20 ms frames mixed and encoded",
            self.frames.clone(),
        );
        r.register(
            "concealed_frames",
            "20 ms of a voice made up by Opus concealment: a lost or late packet",
            self.concealed.clone(),
        );
        r.register(
            "late_packets",
            "Speakers' packets that came after their tick had passed, left out of the mix",
            self.late.clone(),
        );
        r.register(
            "tap_dropped",
            "Speakers' packets a mix's queue had no room for",
            self.tap_dropped.clone(),
        );
        r.register(
            "recording_frames_dropped",
            "Mixed frames a recording's writer had no room for",
            self.recording_frames_dropped.clone(),
        );
        r.register(
            "track_packets_dropped",
            "Speakers' packets a recording with speaker tracks had no room for",
            self.track_packets_dropped.clone(),
        );
    }
}

/// All of the server's metrics. Cloning shares the same underlying atomics.
#[derive(Clone, Default)]
pub struct Metrics {
    pub http_requests: Family<HttpLabels, Counter>,
    pub joins: Family<OutcomeLabels, Counter>,
    pub rooms_created: Counter,
    pub invites_created: Counter,
    pub live_rooms: Gauge,
    pub signal_sockets: Gauge,
    /// Of the signaling sockets, those another node opened for its people (this node is the
    /// room's home, that one its edge): not counted in this node's load.
    pub signal_sockets_from_edges: Gauge,
    /// Sockets served here as an edge of a room whose home is another node, by outcome.
    pub edge_sessions: Family<OutcomeLabels, Counter>,
    pub signal_messages: Family<KindLabels, Counter>,
    pub signal_errors: Family<CodeLabels, Counter>,
    pub media: MediaMetrics,
    pub broadcast: BroadcastMetrics,
    pub process: ProcessMetrics,
    pub connections: crate::connection::ConnectionMetrics,
    pub auth_throttled: Counter,
    /// Live rooms' records waiting in their writers' queues, on this node.
    pub room_records_queued: Gauge,
    /// Writes of a room's record that found the store unavailable and will be tried again.
    pub room_record_retries: Counter,
    /// Records never written, by reason: `refused` by the store, `queue_full`, `shutdown`.
    pub room_records_lost: Family<ReasonLabels, Counter>,
    /// Webhook attempts by outcome: `delivered`, `failed` (tried again), `given_up`.
    pub webhook_attempts: Family<OutcomeLabels, Counter>,
    /// What retention deleted, by kind: `recording`, `clip` (with its recording, or live).
    pub retention_deleted: Family<KindLabels, Counter>,
}

impl Metrics {
    /// Counts what a retention pass deleted.
    pub fn retention_deleted(&self, kind: &str, count: u64) {
        self.retention_deleted
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc_by(count);
    }

    pub fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("stoa");
        r.register(
            "http_requests",
            "HTTP requests by route template, method and status",
            self.http_requests.clone(),
        );
        r.register(
            "joins",
            "Invite redemptions by outcome (ok or the refusal code)",
            self.joins.clone(),
        );
        r.register("rooms_created", "Rooms created", self.rooms_created.clone());
        r.register(
            "invites_created",
            "Invite links created",
            self.invites_created.clone(),
        );
        r.register(
            "retention_deleted",
            "Recordings and clips deleted because their retention ran out, by kind (recording, clip)",
            self.retention_deleted.clone(),
        );
        r.register(
            "live_rooms",
            "Rooms with a live session",
            self.live_rooms.clone(),
        );
        r.register(
            "signal_sockets",
            "Open signaling WebSockets",
            self.signal_sockets.clone(),
        );
        r.register(
            "signal_sockets_from_edges",
            "Of the open signaling WebSockets, those other nodes opened for their people as edges of a room that lives here",
            self.signal_sockets_from_edges.clone(),
        );
        r.register(
            "signal_edge_sessions",
            "Sockets served here as an edge of a room whose home is another node, by outcome (served; sent_home: went on stage; handed_over: this node stopped or drained; no_relay, home_unreachable: refused)",
            self.edge_sessions.clone(),
        );
        r.register(
            "signal_messages",
            "Signaling messages received, by type",
            self.signal_messages.clone(),
        );
        r.register(
            "signal_errors",
            "Signaling errors sent, by code",
            self.signal_errors.clone(),
        );
        r.register(
            "http_connections_open",
            "Open HTTP connections (WebSockets included)",
            self.connections.open.clone(),
        );
        r.register(
            "http_connections_refused",
            "HTTP connections closed on arrival because limits.max_connections were open",
            self.connections.refused.clone(),
        );
        r.register(
            "http_accept_errors",
            "Failed accepts of new connections (typically: out of file descriptors)",
            self.connections.accept_errors.clone(),
        );
        r.register(
            "auth_throttled",
            "Calls refused with too_many_failures (an address failed authentication too often)",
            self.auth_throttled.clone(),
        );
        r.register(
            "room_records_queued",
            "Live rooms' records (roles, removals, bans, ends, audit lines) waiting to be written",
            self.room_records_queued.clone(),
        );
        r.register(
            "room_record_retries",
            "Writes of a room's record that found the store unavailable (tried again later)",
            self.room_record_retries.clone(),
        );
        r.register(
            "room_records_lost",
            "Room records never written, by reason (refused, queue_full, shutdown)",
            self.room_records_lost.clone(),
        );
        r.register(
            "webhook_attempts",
            "Webhook attempts by outcome (delivered, failed and tried again, given_up)",
            self.webhook_attempts.clone(),
        );
        self.media.register(&mut r);
        self.broadcast.register(&mut r);
        self.process.register(&mut r);
        r
    }

    pub fn join_outcome(&self, outcome: &str) {
        self.joins
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub fn webhook_attempt(&self, outcome: &str) {
        self.webhook_attempts
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub fn room_records_lost(&self, reason: &str, count: u64) {
        self.room_records_lost
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc_by(count);
    }

    pub fn signal_error(&self, code: &str) {
        self.signal_errors
            .get_or_create(&CodeLabels {
                code: code.to_owned(),
            })
            .inc();
    }

    pub fn edge_session(&self, outcome: &str) {
        self.edge_sessions
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub fn signal_message(&self, kind: &str) {
        self.signal_messages
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }

    pub fn render(&self) -> String {
        self.process.refresh();
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry())
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_are_read_from_proc_status_lines() {
        let status = "Name:\tstoa\nThreads:\t7\nVmRSS:\t   2048 kB\n";
        assert_eq!(status_field(status, "Threads:"), Some(7));
        assert_eq!(status_field(status, "VmRSS:"), Some(2048));
        assert_eq!(status_field(status, "VmSwap:"), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn process_and_runtime_gauges_are_rendered() {
        let metrics = Metrics::default();
        let held = tokio::spawn(std::future::pending::<()>());
        let text = metrics.render();
        held.abort();
        let value = |name: &str| -> i64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .unwrap_or_else(|| panic!("{name} missing from\n{text}"))
                .parse()
                .unwrap()
        };
        assert!(value("stoa_runtime_alive_tasks") >= 1);
        if proc_self_readable() {
            assert!(value("stoa_process_open_fds") >= 3);
            assert!(value("stoa_process_threads") >= 2);
            assert!(value("stoa_process_resident_memory_bytes") > 1 << 20);
        }
    }
}
