//! `stoa-loadgen`: loads a Stoa server with real WebRTC speakers and listeners and reports
//! join times, loss, server-added delay and the server's CPU and memory. Three modes:
//!
//! - a run against a running server: `stoa-loadgen --url http://127.0.0.1:PORT [--api-key KEY
//!   | env STOA_API_KEY] [--speakers 1] [--listeners 10] [--seconds 10] [--settle-secs 2]
//!   [--server-pid PID] [--allow-remote] [--join-concurrency 64] [--join-timeout-secs 60]
//!   [--check-every 50] [--quiet]`; prints a text report, then one JSON line; exits 1 if audio
//!   did not flow (a listener heard nothing, or one lost more than 5%);
//! - the capacity search, which starts its own servers: `stoa-loadgen --capacity [--stoa
//!   PATH] [--speakers 1,3] [--start 100] [--max-listeners 20000] [--seconds 5] [--settle-secs
//!   2] [--burst 500] [--no-floor] [--retries 1] [--budget-secs 300] [--label TEXT] [--json FILE]`;
//! - the plot of a capacity report: `stoa-loadgen --plot REPORT.json OUT.svg`.
//!
//! Exits 2 on bad arguments or a failed setup. The logic is `stoa_tests::loadgen`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use stoa_client::fleet::raise_fd_limit;
use stoa_tests::loadgen::capacity::{CapacityOptions, run_capacity};
use stoa_tests::loadgen::{Options, plot, run};

const USAGE: &str = "usage:
  stoa-loadgen --url http://127.0.0.1:PORT [--api-key KEY] [--speakers M] [--listeners N] [--seconds S] [--settle-secs S] [--server-pid PID] [--allow-remote] [--join-concurrency C] [--join-timeout-secs T] [--check-every K] [--quiet]
  stoa-loadgen --capacity [--stoa PATH] [--speakers 1,3] [--start N] [--max-listeners N] [--seconds S] [--settle-secs S] [--burst N] [--no-floor] [--retries R] [--budget-secs S] [--check-every K] [--label TEXT] [--json FILE] [--quiet]
  stoa-loadgen --plot REPORT.json OUT.svg";

enum Mode {
    Run(Options),
    Capacity(CapacityOptions, Option<PathBuf>),
    Plot(PathBuf, PathBuf),
}

fn num<T: std::str::FromStr>(name: &str, v: String) -> Result<T, String> {
    v.parse().map_err(|_| format!("{name}: not a number: {v}"))
}

fn parse() -> Result<Mode, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--plot") {
        return match &args[1..] {
            [report, out] => Ok(Mode::Plot(report.into(), out.into())),
            _ => Err(format!("--plot takes REPORT.json OUT.svg\n{USAGE}")),
        };
    }
    let capacity_mode = args.iter().any(|a| a == "--capacity");
    let mut options = Options {
        api_key: std::env::var("STOA_API_KEY").unwrap_or_default(),
        ..Options::default()
    };
    let mut capacity = CapacityOptions {
        stoa: std::env::current_exe()
            .map(|p| p.with_file_name("stoa"))
            .unwrap_or_else(|_| PathBuf::from("stoa")),
        ..CapacityOptions::default()
    };
    let mut json_out = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--capacity" => {}
            "--url" => options.url = value("--url")?,
            "--api-key" => options.api_key = value("--api-key")?,
            "--speakers" => {
                let list: Vec<usize> = value("--speakers")?
                    .split(',')
                    .map(|v| num("--speakers", v.trim().to_owned()))
                    .collect::<Result<_, _>>()?;
                if list.is_empty() || list.contains(&0) {
                    return Err("--speakers: at least one, every count ≥ 1".to_owned());
                }
                if !capacity_mode && list.len() > 1 {
                    return Err("--speakers takes one count outside --capacity".to_owned());
                }
                options.speakers = list[0];
                capacity.speakers = list;
            }
            "--listeners" => options.listeners = num("--listeners", value("--listeners")?)?,
            "--seconds" => {
                options.seconds = num("--seconds", value("--seconds")?)?;
                capacity.seconds = options.seconds;
            }
            "--settle-secs" => {
                let s: f64 = num("--settle-secs", value("--settle-secs")?)?;
                if !(0.0..=600.0).contains(&s) {
                    return Err("--settle-secs must be in [0, 600]".to_owned());
                }
                options.settle = Duration::from_secs_f64(s);
                capacity.settle = options.settle;
            }
            "--server-pid" => {
                options.server_pid = Some(num("--server-pid", value("--server-pid")?)?)
            }
            "--join-concurrency" => {
                options.join_concurrency = num("--join-concurrency", value("--join-concurrency")?)?
            }
            "--join-timeout-secs" => {
                options.join_timeout =
                    Duration::from_secs(num("--join-timeout-secs", value("--join-timeout-secs")?)?)
            }
            "--check-every" => {
                options.check_every = num("--check-every", value("--check-every")?)?;
                if options.check_every == 0 {
                    return Err("--check-every must be at least 1".to_owned());
                }
                capacity.check_every = options.check_every;
            }
            "--allow-remote" => options.allow_remote = true,
            "--quiet" => {
                options.progress = false;
                capacity.progress = false;
            }
            "--stoa" => capacity.stoa = value("--stoa")?.into(),
            "--start" => capacity.start = num("--start", value("--start")?)?,
            "--max-listeners" => {
                capacity.max_listeners = num("--max-listeners", value("--max-listeners")?)?
            }
            "--burst" => capacity.burst = num("--burst", value("--burst")?)?,
            "--no-floor" => capacity.floor = false,
            "--retries" => capacity.retries = num("--retries", value("--retries")?)?,
            "--budget-secs" => {
                capacity.search_budget =
                    Duration::from_secs(num("--budget-secs", value("--budget-secs")?)?)
            }
            "--label" => capacity.label = value("--label")?,
            "--json" => json_out = Some(PathBuf::from(value("--json")?)),
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if !(options.seconds > 0.0 && options.seconds <= 3600.0) {
        return Err("--seconds must be in (0, 3600]".to_owned());
    }
    if capacity_mode {
        if capacity.start == 0 || capacity.max_listeners < capacity.start {
            return Err("--start must be ≥ 1 and ≤ --max-listeners".to_owned());
        }
        return Ok(Mode::Capacity(capacity, json_out));
    }
    if options.api_key.is_empty() {
        return Err(format!(
            "no operator key: --api-key or STOA_API_KEY\n{USAGE}"
        ));
    }
    Ok(Mode::Run(options))
}

fn main() -> ExitCode {
    let mode = match parse() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("stoa-loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    if let Mode::Plot(report, out) = &mode {
        let result = std::fs::read_to_string(report)
            .map_err(|e| format!("{}: {e}", report.display()))
            .and_then(|text| serde_json::from_str(&text).map_err(|e| e.to_string()))
            .and_then(|value| plot::svg(&value))
            .and_then(|svg| {
                std::fs::write(out, svg).map_err(|e| format!("{}: {e}", out.display()))
            });
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("stoa-loadgen --plot: {e}");
                ExitCode::from(2)
            }
        };
    }
    let fds = raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match mode {
        Mode::Run(options) => {
            if (options.listeners + options.speakers) * 2 + 64 > fds as usize {
                eprintln!(
                    "stoa-loadgen: warning: {} open files allowed, about {} needed",
                    fds,
                    (options.listeners + options.speakers) * 2 + 64
                );
            }
            match runtime.block_on(run(options)) {
                Ok(report) => {
                    print!("{}", report.text());
                    println!("{}", report.to_json());
                    if report.audio_ok() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    }
                }
                Err(e) => {
                    eprintln!("stoa-loadgen: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Mode::Capacity(options, json_out) => match runtime.block_on(run_capacity(options)) {
            Ok(report) => {
                print!("{}", report.text());
                let json = report.to_json();
                if let Some(path) = json_out {
                    let text = serde_json::to_string_pretty(&json).expect("JSON");
                    if let Err(e) = std::fs::write(&path, text + "\n") {
                        eprintln!("stoa-loadgen: {}: {e}", path.display());
                        return ExitCode::from(2);
                    }
                } else {
                    println!("{json}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("stoa-loadgen: {e}");
                ExitCode::from(2)
            }
        },
        Mode::Plot(..) => unreachable!("handled above"),
    }
}
