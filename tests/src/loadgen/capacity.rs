//! The capacity search of `stoa-loadgen --capacity`: starts the server as a separate process
//! pinned to one core (one media worker), the load generator pinned to the other, and raises
//! the number of listeners until loss or delay break their bounds; also the join burst and the
//! UDP floor ([`super::floor`]) in the same run, and every figure as a ratio to the floor.
//! It starts and stops servers and decides steps; measuring is [`super::run`]'s.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::floor::{self, FloorStep};
use super::procfs;
use super::{Options, Report, run};

/// What to search.
#[derive(Clone, Debug)]
pub struct CapacityOptions {
    /// The `stoa` binary.
    pub stoa: PathBuf,
    /// One search per entry (speakers per room).
    pub speakers: Vec<usize>,
    /// First N of every search; N doubles until a step fails, then bisects.
    pub start: usize,
    pub max_listeners: usize,
    /// Stop bisecting when the gap is at most this share of the largest N that held.
    pub resolution: f64,
    /// A step holds when loss ≤ this (0.001 = 0.1 %)…
    pub max_loss: f64,
    /// …and the p99 server-added delay ≤ this many ms.
    pub max_p99_ms: f64,
    pub seconds: f64,
    pub settle: Duration,
    pub check_every: u32,
    /// Listeners joining in one burst (0: no burst).
    pub burst: usize,
    /// Measure the UDP floor too.
    pub floor: bool,
    /// A failed step is measured again this many times before it counts as failed (the
    /// machine may be noisy); every attempt is reported.
    pub retries: usize,
    /// Wall-time budget of each search; a search out of time reports what it has.
    pub search_budget: Duration,
    pub server_cpu: usize,
    pub client_cpu: usize,
    /// Free text for the report (date, commit).
    pub label: String,
    pub progress: bool,
}

impl Default for CapacityOptions {
    fn default() -> Self {
        CapacityOptions {
            stoa: PathBuf::from("stoa"),
            speakers: vec![1, 3],
            start: 100,
            max_listeners: 20_000,
            resolution: 0.1,
            max_loss: 0.001,
            max_p99_ms: 10.0,
            seconds: 5.0,
            settle: Duration::from_secs(2),
            check_every: 50,
            burst: 500,
            floor: true,
            retries: 1,
            search_budget: Duration::from_secs(300),
            server_cpu: 0,
            client_cpu: 1,
            label: String::new(),
            progress: true,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A server of our own
// ---------------------------------------------------------------------------------------------

/// A `stoa serve` child process with its own data folder and configuration, pinned to a CPU.
pub struct ServerProcess {
    child: Child,
    dir: tempfile::TempDir,
    pub url: String,
    pub api_key: String,
}

impl ServerProcess {
    /// Starts the server with one media worker and the per-address limits lifted (every load
    /// client comes from 127.0.0.1), and waits until it answers `/healthz`.
    pub async fn start(
        stoa: &Path,
        cpu: Option<usize>,
        max_connections: usize,
    ) -> Result<Self, String> {
        Self::start_with(stoa, cpu, max_connections, "", &[], None).await
    }

    /// [`ServerProcess::start`] with more configuration (`extra`, TOML sections of its own),
    /// environment variables, and a given operator key (the nodes of a cluster share one).
    pub async fn start_with(
        stoa: &Path,
        cpu: Option<usize>,
        max_connections: usize,
        extra: &str,
        env: &[(&str, String)],
        api_key: Option<String>,
    ) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let config = dir.path().join("stoa.toml");
        std::fs::write(
            &config,
            format!(
                "demo_room = false\n\
                 [limits]\njoins_per_minute = 1000000\njoin_burst = 1000000\n\
                 [signal]\nmax_sockets_per_address = 1000000\nroom_max_participants = 1000000\n\
                 [media]\nworkers = 1\nmax_connections = {max_connections}\n{extra}"
            ),
        )
        .map_err(|e| e.to_string())?;
        let log =
            std::fs::File::create(dir.path().join("server.log")).map_err(|e| e.to_string())?;
        // 128 random bits: the server refuses weaker operator keys.
        let api_key = api_key.unwrap_or_else(|| {
            format!(
                "stoa_sk_loadgen_{:016x}{:016x}",
                rand::random::<u64>(),
                rand::random::<u64>()
            )
        });
        let mut command = Command::new(stoa);
        command
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--bind")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--no-demo")
            .env("STOA_API_KEY", &api_key)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        if let Some(cpu) = cpu {
            // What `taskset -c <cpu>` does, without needing taskset.
            // SAFETY: only an async-signal-safe system call between fork and exec.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_SET(cpu, &mut set);
                    if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", stoa.display()))?;
        let mut server = ServerProcess {
            child,
            dir,
            url: format!("http://127.0.0.1:{port}"),
            api_key,
        };
        let http = stoa::http_client::client();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!(
                    "the server exited ({status}): {}",
                    server.log_tail()
                ));
            }
            if let Ok(res) = http.get(format!("{}/healthz", server.url)).send().await
                && res.status().is_success()
            {
                return Ok(server);
            }
            if Instant::now() > deadline {
                let tail = server.log_tail();
                server.stop().await;
                return Err(format!("the server did not come up: {tail}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it wrote to its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }

    /// SIGTERM, then SIGKILL if it has not gone within 5 s.
    pub async fn stop(mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Steps and searches
// ---------------------------------------------------------------------------------------------

/// One measured N.
#[derive(Clone, Debug)]
pub struct Step {
    pub speakers: usize,
    pub listeners: usize,
    pub held: bool,
    /// Why it did not hold ("" when it did).
    pub reason: String,
    pub report: Report,
    pub loadavg: String,
    /// Steal time of each CPU over the step, % of the step's wall time.
    pub steal_percent: Vec<f64>,
    pub wall_s: f64,
    /// A second attempt at the same N after the first failed.
    pub retry: bool,
}

impl Step {
    pub fn client_saturated(&self) -> bool {
        self.report.client.saturated()
    }

    /// The server's media workers waited for their core ≥ 5 % of the window: something else
    /// held it, so delays say as much about the machine as about forwarding. Only the
    /// workers' own wait counts: the server's other threads (signaling, the rooms) queue
    /// behind a busy worker on its pinned core without delaying a packet, and counted in,
    /// they tagged every step of a loaded search.
    pub fn disturbed(&self) -> bool {
        self.report
            .server
            .as_ref()
            .is_some_and(|s| s.media_waited_seconds >= 0.05 * s.window_seconds)
    }

    pub fn line(&self) -> String {
        let r = &self.report;
        let d = &r.delay_us;
        let s = r.server.as_ref();
        format!(
            "{:>2} spk {:>6} lst  {}  loss {:>7.3}%  delay ms p50 {:>6.2} p95 {:>6.2} p99 {:>6.2} max {:>7.2}  server {:>5.1}% (media {:>5.1}%) {:>6} µs/pkt×lst  RSS {:>7} KiB ({:>6} KiB/client)  client {:>5.1}%{}  waited for a CPU: server {:.1}% (media {:.1}%) client {:.1}%  late sends {}  joins {:.1} s  load {}{}{}{}",
            self.speakers,
            self.listeners,
            if self.held { "held  " } else { "FAILED" },
            r.loss() * 100.0,
            d.p50 / 1e3,
            d.p95 / 1e3,
            d.p99 / 1e3,
            d.max / 1e3,
            s.map_or(0.0, |s| s.cpu_share() * 100.0),
            s.map_or(0.0, |s| s.media_cpu_seconds() / s.window_seconds.max(1e-9)
                * 100.0),
            r.cpu_us_per_packet_listener()
                .map_or("-".to_owned(), |v| format!("{v:.2}")),
            s.map_or(0, |s| s.rss_end_kib),
            r.rss_per_client_kib()
                .map_or("-".to_owned(), |v| format!("{v:.1}")),
            r.client.cpu_share * 100.0,
            if self.client_saturated() {
                " SATURATED"
            } else {
                ""
            },
            s.map_or(0.0, |s| s.waited_seconds / s.window_seconds.max(1e-9)
                * 100.0),
            s.map_or(0.0, |s| s.media_waited_seconds / s.window_seconds.max(1e-9)
                * 100.0),
            r.client.waited_share * 100.0,
            r.client.late_sends,
            r.all_connected_s,
            self.loadavg,
            if self.retry { "  (retry)" } else { "" },
            if self.disturbed() { "  DISTURBED" } else { "" },
            if self.reason.is_empty() {
                String::new()
            } else {
                format!("  ({})", self.reason)
            },
        )
    }

    pub fn to_json(&self) -> Value {
        let r = &self.report;
        let s = r.server.as_ref();
        json!({
            "speakers": self.speakers,
            "listeners": self.listeners,
            "held": self.held,
            "reason": self.reason,
            "loss": r.loss(),
            "delay_us": r.delay_us.json(),
            "server_cpu_share": s.map(|s| s.cpu_share()),
            "media_cpu_share": s.map(|s| s.media_cpu_seconds() / s.window_seconds.max(1e-9)),
            "cpu_us_per_packet_listener": r.cpu_us_per_packet_listener(),
            "media_us_per_packet_listener": r.media_us_per_packet_listener(),
            "rss_kib": s.map(|s| s.rss_end_kib),
            "rss_per_client_kib": r.rss_per_client_kib(),
            "client_cpu_share": r.client.cpu_share,
            "client_saturated": self.client_saturated(),
            "server_waited_share": s.map(|s| s.waited_seconds / s.window_seconds.max(1e-9)),
            "media_waited_share": s.map(|s| s.media_waited_seconds / s.window_seconds.max(1e-9)),
            "client_waited_share": r.client.waited_share,
            "late_sends": r.client.late_sends,
            "retry": self.retry,
            "disturbed": self.disturbed(),
            "loadavg": self.loadavg,
            "steal_percent": self.steal_percent,
            "wall_s": self.wall_s,
            "report": r.to_json(),
        })
    }
}

/// Runs one step: a fresh server, `speakers` + `listeners` clients, the window, judged.
pub async fn step(
    options: &CapacityOptions,
    speakers: usize,
    listeners: usize,
    join_concurrency: usize,
) -> Result<Step, String> {
    let started = Instant::now();
    let loadavg = procfs::loadavg();
    let steal_before = procfs::steal_ticks();
    let server = ServerProcess::start(
        &options.stoa,
        Some(options.server_cpu),
        (speakers + listeners) * 2 + 100,
    )
    .await?;
    let result = run(Options {
        url: server.url.clone(),
        api_key: server.api_key.clone(),
        speakers,
        listeners,
        seconds: options.seconds,
        settle: options.settle,
        server_pid: Some(server.pid()),
        allow_remote: false,
        join_concurrency,
        join_timeout: Duration::from_secs(120),
        check_every: options.check_every,
        progress: false,
    })
    .await;
    server.stop().await;
    let report = result?;
    let wall_s = started.elapsed().as_secs_f64();
    let hz = procfs::ticks_per_second();
    let steal_percent = procfs::steal_ticks()
        .iter()
        .zip(&steal_before)
        .map(|(after, before)| (after - before) as f64 / hz / wall_s * 100.0)
        .collect();
    let reason = judge(options, &report);
    Ok(Step {
        speakers,
        listeners,
        held: reason.is_empty(),
        reason,
        report,
        loadavg,
        steal_percent,
        wall_s,
        retry: false,
    })
}

/// Why a step did not hold, or "" if it did.
fn judge(options: &CapacityOptions, report: &Report) -> String {
    let mut why = Vec::new();
    if report.joins_failed > 0 {
        why.push(format!("{} joins failed", report.joins_failed));
    }
    if report.silent_listeners() > 0 {
        why.push(format!(
            "{} listeners heard nothing",
            report.silent_listeners()
        ));
    }
    if report.loss() > options.max_loss {
        why.push(format!("loss {:.3}%", report.loss() * 100.0));
    }
    if report.delay_us.p99 > options.max_p99_ms * 1e3 {
        why.push(format!("p99 {:.2} ms", report.delay_us.p99 / 1e3));
    }
    if report.unmatched() > 0 || report.checks.remapped > 0 {
        why.push(format!(
            "{} unmatched, {} remapped packets",
            report.unmatched(),
            report.checks.remapped
        ));
    }
    why.join(", ")
}

/// What limited a search.
fn limit_name(
    last_failed_client_bound: bool,
    last_failed_disturbed: bool,
    budget: bool,
    max: bool,
) -> &'static str {
    if last_failed_client_bound {
        "client"
    } else if last_failed_disturbed {
        "disturbed"
    } else if budget {
        "budget"
    } else if max {
        "max_listeners"
    } else {
        "server"
    }
}

/// The outcome of a search, for servers and for the floor alike.
#[derive(Clone, Debug)]
pub struct Search<S> {
    pub speakers: usize,
    /// The largest N that held (0: none did).
    pub held: usize,
    /// The smallest N that failed, if any.
    pub failed: Option<usize>,
    pub limited_by: &'static str,
    pub steps: Vec<S>,
}

/// Doubles N from `start` while steps hold, then bisects between the last that held and the
/// first that failed. `measure(n)` returns (held, client-bound, disturbed) and its attempts.
async fn search<S, F, Fut>(
    options: &CapacityOptions,
    speakers: usize,
    start: usize,
    mut measure: F,
) -> Search<S>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Option<(bool, bool, bool, Vec<S>)>>,
{
    let began = Instant::now();
    let mut steps = Vec::new();
    let mut held = 0;
    let mut failed: Option<usize> = None;
    let mut client_bound = false;
    let mut disturbed = false;
    let mut n = start.max(1);
    let mut out_of_time = false;
    // Coarse: double.
    loop {
        if began.elapsed() > options.search_budget {
            out_of_time = true;
            break;
        }
        let Some((ok, bound, noisy, step)) = measure(n).await else {
            failed = Some(n);
            break;
        };
        steps.extend(step);
        if ok {
            held = n;
            if n >= options.max_listeners {
                break;
            }
            n = (n * 2).min(options.max_listeners);
        } else {
            failed = Some(n);
            client_bound = bound;
            disturbed = noisy;
            break;
        }
    }
    // Fine: bisect, down to `resolution` of the largest that held (and 10 listeners).
    while let Some(high) = failed {
        if client_bound || began.elapsed() > options.search_budget {
            out_of_time |= !client_bound;
            break;
        }
        let gap = high - held;
        if gap as f64 <= (held as f64 * options.resolution).max(10.0) {
            break;
        }
        let mid = ((held + high) / 2).div_ceil(10) * 10;
        let mid = mid.clamp(held + 1, high - 1);
        let Some((ok, bound, noisy, step)) = measure(mid).await else {
            break;
        };
        steps.extend(step);
        if ok {
            held = mid;
        } else {
            failed = Some(mid);
            client_bound = bound;
            disturbed = noisy;
        }
    }
    Search {
        speakers,
        held,
        failed,
        limited_by: limit_name(
            client_bound,
            disturbed,
            out_of_time,
            failed.is_none() && held >= options.max_listeners,
        ),
        steps,
    }
}

/// Everything `--capacity` measured.
pub struct CapacityReport {
    pub options: CapacityOptions,
    pub searches: Vec<Search<Step>>,
    pub floors: Vec<Search<FloorStep>>,
    pub burst: Option<Step>,
    pub loadavg_start: String,
    pub loadavg_end: String,
    pub started_unix: u64,
    pub total_s: f64,
}

/// The step at the capacity of a search (the largest that held).
fn at_capacity<S>(search: &Search<S>, n_of: impl Fn(&S) -> (usize, bool)) -> Option<&S> {
    search
        .steps
        .iter()
        .filter(|s| n_of(s).1)
        .max_by_key(|s| n_of(s).0)
}

impl CapacityReport {
    fn floor_for(&self, speakers: usize) -> Option<&Search<FloorStep>> {
        self.floors.iter().find(|f| f.speakers == speakers)
    }

    /// Per search: (listeners per core, ratio to the floor's; µs per packet×listener, ratio
    /// to the floor's µs per packet).
    fn ratios(&self, search: &Search<Step>) -> Value {
        let step = at_capacity(search, |s| (s.listeners, s.held));
        let floor = self.floor_for(search.speakers);
        let floor_step = floor.and_then(|f| at_capacity(f, |s| (s.destinations, s.held)));
        let cpu = step.and_then(|s| s.report.cpu_us_per_packet_listener());
        let media = step.and_then(|s| s.report.media_us_per_packet_listener());
        let floor_cpu = floor_step.map(|f| f.cpu_us_per_packet());
        json!({
            "speakers": search.speakers,
            "listeners_per_core": search.held,
            "floor_listeners_per_core": floor.map(|f| f.held),
            "listeners_ratio_to_floor": floor.filter(|f| f.held > 0).map(|f| search.held as f64 / f.held as f64),
            "cpu_us_per_packet_listener": cpu,
            "media_us_per_packet_listener": media,
            "floor_cpu_us_per_packet": floor_cpu,
            "cpu_ratio_to_floor": cpu.zip(floor_cpu).map(|(c, f)| c / f),
            "media_ratio_to_floor": media.zip(floor_cpu).map(|(c, f)| c / f),
            "rss_per_client_kib": step.and_then(|s| s.report.rss_per_client_kib()),
        })
    }

    pub fn to_json(&self) -> Value {
        let o = &self.options;
        json!({
            "tool": "stoa-loadgen --capacity",
            "label": o.label,
            "started_unix": self.started_unix,
            "total_s": self.total_s,
            "machine": machine(),
            "loadavg_start": self.loadavg_start,
            "loadavg_end": self.loadavg_end,
            "method": {
                "server_cpu": o.server_cpu,
                "client_cpu": o.client_cpu,
                "media_workers": 1,
                "max_loss": o.max_loss,
                "max_p99_ms": o.max_p99_ms,
                "window_s": o.seconds,
                "settle_s": o.settle.as_secs_f64(),
                "check_every": o.check_every,
                "start": o.start,
                "resolution": o.resolution,
            },
            "capacity": self.searches.iter().map(|s| json!({
                "speakers": s.speakers,
                "listeners": s.held,
                "first_failed": s.failed,
                "limited_by": s.limited_by,
                "steps": s.steps.iter().map(Step::to_json).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "floor": self.floors.iter().map(|s| json!({
                "speakers": s.speakers,
                "destinations": s.held,
                "first_failed": s.failed,
                "limited_by": s.limited_by,
                "steps": s.steps.iter().map(FloorStep::to_json).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "ratios": self.searches.iter().map(|s| self.ratios(s)).collect::<Vec<_>>(),
            "burst": self.burst.as_ref().map(|b| json!({
                "listeners": b.listeners,
                "joins_ok": b.report.joins_ok,
                "joins_failed": b.report.joins_failed,
                "join_ms": b.report.join_ms.json(),
                "first_audio_ms": b.report.first_audio_ms.json(),
                "all_connected_s": b.report.all_connected_s,
                "all_hearing_s": b.report.all_hearing_s,
                "server_ms_per_join": b.report.join_cpu.as_ref().map(|j| j.ms_per_join()),
                "server_media_ms_per_join": b.report.join_cpu.as_ref().map(|j| j.media_ms_per_join()),
                "server_cpu_share_while_joining": b.report.join_cpu.as_ref().map(|j| j.share()),
                "step": b.to_json(),
            })),
        })
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        let o = &self.options;
        out += &format!(
            "stoa-loadgen --capacity {}: server on CPU {} (1 media worker), load generator on CPU {}; a step holds with loss ≤ {:.2}% and p99 server-added delay ≤ {} ms over a {} s window after {} s settling\n",
            o.label,
            o.server_cpu,
            o.client_cpu,
            o.max_loss * 100.0,
            o.max_p99_ms,
            o.seconds,
            o.settle.as_secs_f64()
        );
        out += &format!(
            "load average at start {}, at end {}; total {:.0} s\n",
            self.loadavg_start, self.loadavg_end, self.total_s
        );
        for s in &self.searches {
            out += &format!(
                "\ncapacity, {} speaker(s): {} listeners held{} (limited by {})\n",
                s.speakers,
                s.held,
                s.failed.map_or(String::new(), |f| format!(", {f} failed")),
                s.limited_by
            );
            for step in &s.steps {
                out += &format!("  {}\n", step.line());
            }
        }
        for f in &self.floors {
            out += &format!(
                "\nUDP floor, {} speaker(s): {} destinations held{} (limited by {})\n",
                f.speakers,
                f.held,
                f.failed.map_or(String::new(), |n| format!(", {n} failed")),
                f.limited_by
            );
            for step in &f.steps {
                out += &format!("  {}\n", step.line());
            }
        }
        if !self.searches.is_empty() {
            out += "\nagainst the floor:\n";
            for s in &self.searches {
                let r = self.ratios(s);
                let num = |k: &str, digits: usize| {
                    r[k].as_f64()
                        .map_or("-".to_owned(), |v| format!("{v:.digits$}"))
                };
                out += &format!(
                    "  {} speaker(s): {} listeners per core against the floor's {} ({}×); server {} µs per packet×listener (media worker {}) against the floor's {} µs per packet ({}×, media {}×); RSS {} KiB per client\n",
                    s.speakers,
                    s.held,
                    num("floor_listeners_per_core", 0),
                    num("listeners_ratio_to_floor", 3),
                    num("cpu_us_per_packet_listener", 2),
                    num("media_us_per_packet_listener", 2),
                    num("floor_cpu_us_per_packet", 3),
                    num("cpu_ratio_to_floor", 1),
                    num("media_ratio_to_floor", 1),
                    num("rss_per_client_kib", 1),
                );
            }
        }
        if let Some(b) = &self.burst {
            let r = &b.report;
            out += &format!(
                "\njoin burst: {} listeners at once (1 speaker talking): {} ok, {} failed; redeem → connected ms p50 {:.0} p95 {:.0} max {:.0}; redeem → first audio ms p50 {:.0} p95 {:.0} max {:.0}; all connected {:.2} s, all hearing {:.2} s\n  {}\n",
                b.listeners,
                r.joins_ok,
                r.joins_failed,
                r.join_ms.p50,
                r.join_ms.p95,
                r.join_ms.max,
                r.first_audio_ms.p50,
                r.first_audio_ms.p95,
                r.first_audio_ms.max,
                r.all_connected_s,
                r.all_hearing_s,
                b.line(),
            );
            if let Some(j) = &r.join_cpu {
                out += &format!(
                    "  server CPU while joining: {:.0}% of its core over {:.2} s, {:.2} ms per join ({:.2} ms in the media worker); load generator {:.0}% of its core\n",
                    j.share() * 100.0,
                    j.wall_seconds,
                    j.ms_per_join(),
                    j.media_ms_per_join(),
                    j.client_cpu_seconds / j.wall_seconds.max(1e-9) * 100.0,
                );
            }
        }
        out
    }
}

/// What the report says about the machine.
fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or(String::new(), |(_, m)| m.trim().to_owned());
    json!({
        "cpus": procfs::cpus(),
        "model": model,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
    })
}

/// The whole `--capacity` run: searches, floors, burst. Pins the calling process to the
/// client CPU first (threads started later inherit it; the floor's sender pins itself to the
/// server CPU).
pub async fn run_capacity(options: CapacityOptions) -> Result<CapacityReport, String> {
    if procfs::cpus() < 2 {
        return Err(
            "the capacity search needs two CPUs (server on one, clients on the other)".into(),
        );
    }
    procfs::pin_process(options.client_cpu)
        .map_err(|e| format!("cannot pin to CPU {}: {e}", options.client_cpu))?;
    let started = Instant::now();
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let loadavg_start = procfs::loadavg();
    let say = |line: String| {
        if options.progress {
            eprintln!("[{:6.1}s] {line}", started.elapsed().as_secs_f64());
        }
    };

    let mut searches = Vec::new();
    for &speakers in &options.speakers {
        let start = (options.start / speakers).clamp(10, options.max_listeners);
        let result = search(&options, speakers, start, |n| {
            let options = &options;
            let say = &say;
            async move {
                let mut attempts: Vec<Step> = Vec::new();
                loop {
                    match step(options, speakers, n, 64).await {
                        Ok(mut step) => {
                            step.retry = !attempts.is_empty();
                            say(step.line());
                            let done = step.held || step.client_saturated();
                            attempts.push(step);
                            // One more try when every attempt so far was disturbed.
                            let all_disturbed = attempts.iter().all(Step::disturbed);
                            if done || attempts.len() > options.retries + usize::from(all_disturbed)
                            {
                                break;
                            }
                        }
                        Err(e) => {
                            say(format!(
                                "{speakers} speaker(s), {n} listeners: step failed: {e}"
                            ));
                            break;
                        }
                    }
                }
                let last = attempts.last()?;
                Some((
                    last.held,
                    last.client_saturated(),
                    last.disturbed(),
                    attempts,
                ))
            }
        })
        .await;
        searches.push(result);
    }

    let burst = if options.burst > 0 {
        match step(&options, 1, options.burst, options.burst).await {
            Ok(step) => {
                say(format!("burst: {}", step.line()));
                Some(step)
            }
            Err(e) => {
                say(format!("burst failed: {e}"));
                None
            }
        }
    } else {
        None
    };

    let mut floors = Vec::new();
    if options.floor {
        for &speakers in &options.speakers {
            // The datagrams the listeners received in this search (or a typical Opus packet).
            let bytes = searches
                .iter()
                .find(|s| s.speakers == speakers)
                .and_then(|s| s.steps.iter().find(|st| st.report.datagram_bytes > 0.0))
                .map_or(floor::DEFAULT_BYTES, |st| {
                    st.report.datagram_bytes.round() as usize
                });
            // The floor goes further than the server: give it four times the room.
            let floor_search = CapacityOptions {
                max_listeners: options.max_listeners * 4,
                ..options.clone()
            };
            let start = (options.start * 4 / speakers).clamp(10, floor_search.max_listeners);
            let result = search(&floor_search, speakers, start, |n| {
                let options = &options;
                let say = &say;
                async move {
                    let floor_options = floor::FloorOptions {
                        destinations: n,
                        speakers,
                        bytes,
                        seconds: options.seconds.min(3.0),
                        settle: Duration::from_millis(500),
                        sender_cpu: options.server_cpu,
                        max_loss: options.max_loss,
                        max_p99_ms: options.max_p99_ms,
                    };
                    let mut attempts: Vec<FloorStep> = Vec::new();
                    loop {
                        let floor_options = floor_options.clone();
                        let result =
                            tokio::task::spawn_blocking(move || floor::step(&floor_options))
                                .await
                                .map_err(|e| e.to_string())
                                .and_then(|r| r);
                        match result {
                            Ok(mut step) => {
                                step.retry = !attempts.is_empty();
                                say(step.line());
                                let done = step.held || step.client_saturated();
                                attempts.push(step);
                                let all_disturbed = attempts.iter().all(FloorStep::disturbed);
                                if done
                                    || attempts.len() > options.retries + usize::from(all_disturbed)
                                {
                                    break;
                                }
                            }
                            Err(e) => {
                                say(format!("floor, {n} destinations: {e}"));
                                break;
                            }
                        }
                    }
                    let last = attempts.last()?;
                    Some((
                        last.held,
                        last.client_saturated(),
                        last.disturbed(),
                        attempts,
                    ))
                }
            })
            .await;
            floors.push(result);
        }
    }

    Ok(CapacityReport {
        options,
        searches,
        floors,
        burst,
        loadavg_start,
        loadavg_end: procfs::loadavg(),
        started_unix,
        total_s: started.elapsed().as_secs_f64(),
    })
}
