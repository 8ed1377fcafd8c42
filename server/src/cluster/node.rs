//! A node as the registry lists it, and the load it reports.

use serde::{Deserialize, Serialize};

use crate::clock::rfc3339;

/// One node of the cluster, as `GET /api/v1/cluster/nodes` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeInfo {
    pub name: String,
    /// This run of the node (a restart under the same name gets a new one).
    pub instance: String,
    /// The address everyone shares (invite links).
    pub public_url: String,
    /// The node's own address.
    pub node_url: String,
    /// Where the other nodes reach it (plain HTTP on the private network).
    #[serde(default)]
    pub internal_url: String,
    /// Where the node's signaling sockets connect.
    pub signal_url: String,
    /// The media workers' UDP addresses, as advertised (where clients and other nodes send;
    /// relay links are taken only from these).
    pub media: Vec<String>,
    /// WebRTC connections the node accepts in all.
    pub capacity: u32,
    pub load: Load,
    pub started_at: String,
    pub heartbeat_at: String,
}

/// What a node is carrying now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Load {
    /// Signaling sockets open.
    pub connections: u32,
    /// Rooms whose home is this node.
    pub rooms: u32,
    /// CPU the process used since the last heartbeat, in percent of one core.
    pub cpu_percent: f32,
}

/// Where a node is reached, by whom.
pub struct Addresses {
    /// The address everyone shares (invite links).
    pub public_url: String,
    /// The node's own address, for its clients.
    pub node_url: String,
    /// Where the other nodes reach it.
    pub internal_url: String,
    /// Where its signaling sockets connect.
    pub signal_url: String,
}

impl NodeInfo {
    /// A node starting now, with a new instance id and no load yet.
    pub fn starting(
        name: String,
        addresses: Addresses,
        media: Vec<String>,
        capacity: u32,
        now_ms: i64,
    ) -> Self {
        let Addresses {
            public_url,
            node_url,
            internal_url,
            signal_url,
        } = addresses;
        let mut instance = [0u8; 12];
        getrandom::fill(&mut instance).expect("the OS random generator is unavailable");
        NodeInfo {
            name,
            instance: instance.iter().map(|b| format!("{b:02x}")).collect(),
            public_url,
            node_url,
            internal_url,
            signal_url,
            media,
            capacity,
            load: Load::default(),
            started_at: rfc3339(now_ms),
            heartbeat_at: rfc3339(now_ms),
        }
    }

    /// The base URL other nodes pass calls to (records from before `internal_url` existed
    /// name only `node_url`).
    pub fn reach(&self) -> &str {
        if self.internal_url.is_empty() {
            &self.node_url
        } else {
            &self.internal_url
        }
    }

    /// How full the node is, 0 (idle) to 1 (at capacity): connections against capacity, or
    /// CPU, whichever is higher.
    pub fn fullness(&self) -> f64 {
        let connections = f64::from(self.load.connections) / f64::from(self.capacity.max(1));
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let cpu = f64::from(self.load.cpu_percent) / (100.0 * cores);
        connections.max(cpu)
    }
}

/// The process's CPU time so far (user + system), from `/proc/self/stat`; `None` elsewhere.
pub fn process_cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name is in parentheses and may hold spaces; fields 14 and 15 (utime,
    // stime) count from after it.
    let after = &stat[stat.rfind(')')? + 2..];
    let mut fields = after.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Turns CPU tick readings into a percentage of one core.
#[derive(Debug, Default)]
pub struct CpuMeter {
    last: Option<(u64, std::time::Instant)>,
}

impl CpuMeter {
    pub fn sample(&mut self) -> f32 {
        let Some(ticks) = process_cpu_ticks() else {
            return 0.0;
        };
        let now = std::time::Instant::now();
        // SAFETY: sysconf has no preconditions.
        let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let percent = match self.last {
            Some((before, at)) => {
                let secs = now.duration_since(at).as_secs_f64().max(1e-3);
                (ticks.saturating_sub(before) as f64 / per_sec / secs * 100.0) as f32
            }
            None => 0.0,
        };
        self.last = Some((ticks, now));
        percent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_and_grows_with_work() {
        let mut meter = CpuMeter::default();
        assert_eq!(
            meter.sample(),
            0.0,
            "the first sample has nothing to compare with"
        );
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(300) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let busy = meter.sample();
        assert!(busy > 30.0, "a busy loop used {busy} % of a core");
    }

    #[test]
    fn fullness_is_the_higher_of_connections_and_cpu() {
        let mut node = NodeInfo {
            name: "a".into(),
            instance: "i".into(),
            public_url: String::new(),
            node_url: String::new(),
            internal_url: String::new(),
            signal_url: String::new(),
            media: Vec::new(),
            capacity: 1_000,
            load: Load {
                connections: 500,
                rooms: 1,
                cpu_percent: 0.0,
            },
            started_at: String::new(),
            heartbeat_at: String::new(),
        };
        assert!((node.fullness() - 0.5).abs() < 1e-9);
        node.load.cpu_percent = 1_000.0 * 64.0;
        assert!(node.fullness() >= 1.0);
    }
}
