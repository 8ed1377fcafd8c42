//! What the load tools read from `/proc` and ask of the scheduler: a process's CPU time per
//! thread (`schedstat`, in ns), its resident memory, the machine's load and steal time, and
//! CPU pinning. Linux only; readers return `None` rather than fail.

use std::collections::HashMap;

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
        self.delta(earlier).map(|(_, _, wait)| wait).sum::<u64>() as f64 / 1e9
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

/// Online CPUs of the machine (whatever this process is pinned to).
pub fn cpus() -> usize {
    // SAFETY: no memory.
    unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize
}
