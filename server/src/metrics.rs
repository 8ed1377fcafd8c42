//! Prometheus metrics the server exports at `/metrics`: counters and gauges registered once
//! at start and updated with atomics. Rendering only; no HTTP here.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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

/// All of the server's metrics. Cloning shares the same underlying atomics.
#[derive(Clone, Default)]
pub struct Metrics {
    pub http_requests: Family<HttpLabels, Counter>,
    pub joins: Family<OutcomeLabels, Counter>,
    pub rooms_created: Counter,
    pub invites_created: Counter,
    pub live_rooms: Gauge,
    pub signal_sockets: Gauge,
    pub signal_messages: Family<KindLabels, Counter>,
    pub signal_errors: Family<CodeLabels, Counter>,
}

impl Metrics {
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
            "signal_messages",
            "Signaling messages received, by type",
            self.signal_messages.clone(),
        );
        r.register(
            "signal_errors",
            "Signaling errors sent, by code",
            self.signal_errors.clone(),
        );
        r
    }

    pub fn join_outcome(&self, outcome: &str) {
        self.joins
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub fn signal_error(&self, code: &str) {
        self.signal_errors
            .get_or_create(&CodeLabels {
                code: code.to_owned(),
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
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry())
            .expect("writing to a String cannot fail");
        out
    }
}
