//! What the load tools read from `/proc` and ask of the scheduler: a process's CPU time per
//! thread (`schedstat`, in ns), its resident memory, the machine's load and steal time, and
//! CPU pinning, and what each open descriptor is. Linux only; readers return `None` rather
//! than fail.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// CPU time of every thread of a process at one moment.
#[derive(Clone, Debug, Default)]
pub struct CpuSample {
    /// tid → (thread name, ns on a CPU, ns runnable but waiting for a CPU).
    threads: HashMap<u32, (String, u64, u64)>,
}

impl CpuSample {
    pub fn read(pid: u32) -> Option<CpuSample> {
        let mut threads = HashMap::new();
        for entry in std::fs::read_dir(format!("/proc/{pid}/task"))
            .ok()?
            .flatten()
        {
            let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) else {
                continue;
            };
            let path = entry.path();
            let Ok(schedstat) = std::fs::read_to_string(path.join("schedstat")) else {
                continue;
            };
            let mut fields = schedstat
                .split_whitespace()
                .map(|v| v.parse::<u64>().unwrap_or(0));
            let (run, wait) = (fields.next().unwrap_or(0), fields.next().unwrap_or(0));
            let name = std::fs::read_to_string(path.join("comm"))
                .unwrap_or_default()
                .trim_end()
                .to_owned();
            threads.insert(tid, (name, run, wait));
        }
        Some(CpuSample { threads })
    }

    /// Per thread since `earlier`: (name, ns on a CPU, ns waiting for one).
    fn delta(&self, earlier: &CpuSample) -> impl Iterator<Item = (&str, u64, u64)> {
        self.threads.iter().map(|(tid, (name, run, wait))| {
            let (run0, wait0) = earlier
                .threads
                .get(tid)
                .map_or((0, 0), |(_, r, w)| (*r, *w));
            (
                name.as_str(),
                run.saturating_sub(run0),
                wait.saturating_sub(wait0),
            )
        })
    }

    /// CPU seconds the process's threads used since `earlier` (threads that ended in between
    /// are missed; in a steady window there are none worth counting).
    pub fn since(&self, earlier: &CpuSample) -> f64 {
        self.delta(earlier).map(|(_, run, _)| run).sum::<u64>() as f64 / 1e9
    }

    /// Seconds the process's threads spent runnable but waiting for a CPU since `earlier`:
    /// on a pinned process, the time other processes (or its own threads) held its core.
    pub fn waited_since(&self, earlier: &CpuSample) -> f64 {
        self.waited_since_by(earlier, "")
    }

    /// The same for the threads whose name starts with `prefix`.
    pub fn waited_since_by(&self, earlier: &CpuSample, prefix: &str) -> f64 {
        self.delta(earlier)
            .filter(|(name, _, _)| name.starts_with(prefix))
            .map(|(_, _, wait)| wait)
            .sum::<u64>() as f64
            / 1e9
    }

    /// CPU seconds since `earlier` per thread name, largest first.
    pub fn threads_since(&self, earlier: &CpuSample) -> Vec<(String, f64)> {
        let mut by_name: HashMap<&str, u64> = HashMap::new();
        for (name, run, _) in self.delta(earlier) {
            *by_name.entry(name).or_default() += run;
        }
        let mut list: Vec<(String, f64)> = by_name
            .into_iter()
            .filter(|(_, ns)| *ns > 0)
            .map(|(name, ns)| (name.to_owned(), ns as f64 / 1e9))
            .collect();
        list.sort_by(|a, b| b.1.total_cmp(&a.1));
        list
    }
}

/// A process's CPU per thread and resident memory.
#[derive(Clone, Debug, Default)]
pub struct ProcessSample {
    pub cpu: CpuSample,
    pub rss_kib: u64,
}

impl ProcessSample {
    pub fn read(pid: u32) -> Option<ProcessSample> {
        Some(ProcessSample {
            cpu: CpuSample::read(pid)?,
            rss_kib: rss_kib(pid)?,
        })
    }
}

/// VmRSS of a process, KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The 1, 5 and 15 minute load averages, as `uptime` shows them.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Steal ticks of every CPU (`/proc/stat`), by CPU number: time the hypervisor ran something
/// else while that CPU wanted to run.
pub fn steal_ticks() -> Vec<u64> {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return Vec::new();
    };
    stat.lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .map(|l| {
            l.split_whitespace()
                .nth(8)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        })
        .collect()
}

/// Clock ticks per second, for `steal_ticks`.
pub fn ticks_per_second() -> f64 {
    // SAFETY: no memory.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

/// Pins a thread (`tid`; 0 = the calling thread) to one CPU. Threads it starts afterwards
/// inherit the pinning.
pub fn pin(tid: i32, cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is empty; the size passed is its own.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Pins every thread of this process to one CPU; threads started afterwards inherit it from
/// whichever thread starts them.
pub fn pin_process(cpu: usize) -> std::io::Result<()> {
    for entry in std::fs::read_dir("/proc/self/task")?.flatten() {
        if let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) {
            pin(tid, cpu)?;
        }
    }
    Ok(())
}

/// The calling thread's id.
pub fn gettid() -> i32 {
    // SAFETY: no arguments, no memory.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// CPU time of the calling thread, ns.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// This process's threads named `name`, oldest first (thread ids grow).
pub fn threads_named(name: &str) -> Vec<i32> {
    let mut tids: Vec<i32> = std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| {
            std::fs::read_to_string(entry.path().join("comm"))
                .is_ok_and(|comm| comm.trim_end() == name)
        })
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    tids
}

/// CPU time of thread `tid` of this process, ns (`schedstat`); 0 if it is gone.
pub fn tid_cpu_ns(tid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Online CPUs of the machine (whatever this process is pinned to).
pub fn cpus() -> usize {
    // SAFETY: no memory.
    unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize
}

/// One open descriptor of a process.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Descriptor {
    /// A TCP socket: listening (no peer), or a connection in some state.
    Tcp {
        local: SocketAddr,
        peer: Option<SocketAddr>,
        state: &'static str,
    },
    /// A UDP socket.
    Udp { local: SocketAddr },
    /// A socket not in the TCP or UDP tables (Unix, netlink…), by its table.
    OtherSocket(&'static str),
    /// Anything else, by the target of its `/proc/<pid>/fd` link: a path,
    /// `anon_inode:[eventpoll]`, `pipe:[…]`.
    Other(String),
}

impl Descriptor {
    /// The remote address of a TCP connection.
    pub fn peer(&self) -> Option<SocketAddr> {
        match self {
            Descriptor::Tcp { peer, .. } => *peer,
            _ => None,
        }
    }
}

impl std::fmt::Display for Descriptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Descriptor::Tcp {
                local,
                peer: None,
                state,
            } => write!(f, "tcp {local} {state}"),
            Descriptor::Tcp {
                local,
                peer: Some(peer),
                state,
            } => write!(f, "tcp {local} ↔ {peer} {state}"),
            Descriptor::Udp { local } => write!(f, "udp {local}"),
            Descriptor::OtherSocket(table) => write!(f, "{table} socket"),
            Descriptor::Other(target) => f.write_str(target),
        }
    }
}

/// Every open descriptor of a process, sorted: sockets with their addresses and TCP state
/// (from the tables of the process's network namespace), anything else by its link target.
pub fn descriptors(pid: u32) -> Option<Vec<Descriptor>> {
    let sockets = socket_table(pid);
    let mut list = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        // A descriptor closed between the listing and the read is simply not there any more.
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        let inode = target
            .strip_prefix("socket:[")
            .and_then(|rest| rest.strip_suffix(']'))
            .and_then(|inode| inode.parse::<u64>().ok());
        list.push(match inode {
            Some(inode) => sockets
                .get(&inode)
                .cloned()
                .unwrap_or(Descriptor::OtherSocket("unknown")),
            None => Descriptor::Other(target),
        });
    }
    list.sort();
    Some(list)
}

/// Inode → socket, for the sockets in the process's network namespace.
fn socket_table(pid: u32) -> HashMap<u64, Descriptor> {
    const TCP_STATES: [&str; 12] = [
        "?",
        "established",
        "syn-sent",
        "syn-recv",
        "fin-wait1",
        "fin-wait2",
        "time-wait",
        "close",
        "close-wait",
        "last-ack",
        "listen",
        "closing",
    ];
    let mut table = HashMap::new();
    for proto in ["tcp", "tcp6", "udp", "udp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{proto}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(remote), Some(state), Some(inode)) = (
                fields.get(1).and_then(|a| socket_address(a)),
                fields.get(2).and_then(|a| socket_address(a)),
                fields
                    .get(3)
                    .and_then(|s| usize::from_str_radix(s, 16).ok()),
                fields.get(9).and_then(|i| i.parse::<u64>().ok()),
            ) else {
                continue;
            };
            let descriptor = if proto.starts_with("udp") {
                Descriptor::Udp { local }
            } else {
                let state = TCP_STATES.get(state).copied().unwrap_or("?");
                Descriptor::Tcp {
                    local,
                    peer: (state != "listen").then_some(remote),
                    state,
                }
            };
            table.insert(inode, descriptor);
        }
    }
    if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/unix")) {
        for line in text.lines().skip(1) {
            if let Some(inode) = line
                .split_whitespace()
                .nth(6)
                .and_then(|i| i.parse::<u64>().ok())
            {
                table.insert(inode, Descriptor::OtherSocket("unix"));
            }
        }
    }
    table
}

/// `0100007F:1F90` (or its 32-digit IPv6 form) → `127.0.0.1:8080`.
fn socket_address(hex: &str) -> Option<SocketAddr> {
    let (ip, port) = hex.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    // /proc prints each 32-bit word of the address as a number in host (little-endian) order.
    let mut bytes = Vec::with_capacity(16);
    for i in 0..ip.len() / 8 {
        let word = u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok()?;
        bytes.extend_from_slice(&word.to_le_bytes());
    }
    let ip: IpAddr = match bytes.len() {
        4 => Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).into(),
        16 => Ipv6Addr::from(<[u8; 16]>::try_from(bytes.as_slice()).ok()?).into(),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_addresses() {
        assert_eq!(
            socket_address("0100007F:1F90"),
            Some("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(
            socket_address("0200007F:0050"),
            Some("127.0.0.2:80".parse().unwrap())
        );
        assert_eq!(
            socket_address("00000000000000000000000001000000:1F90"),
            Some("[::1]:8080".parse().unwrap())
        );
        assert_eq!(socket_address("nonsense"), None);
    }

    #[test]
    fn this_process_has_its_listening_socket_and_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let list = descriptors(std::process::id()).unwrap();
        assert!(list.contains(&Descriptor::Tcp {
            local: listener.local_addr().unwrap(),
            peer: None,
            state: "listen",
        }));
        assert!(list.contains(&Descriptor::Tcp {
            local: client.local_addr().unwrap(),
            peer: Some(listener.local_addr().unwrap()),
            state: "established",
        }));
    }
}
