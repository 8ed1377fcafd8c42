//! `stoa-loadgen`: loads a running Stoa server with real WebRTC speakers and listeners and
//! reports join times, loss, server-added delay and the server's CPU and memory.
//!
//! Usage: `stoa-loadgen --url http://127.0.0.1:PORT [--api-key KEY | env STOA_API_KEY]
//! [--speakers 1] [--listeners 10] [--seconds 10] [--server-pid PID] [--allow-remote]
//! [--join-concurrency 64] [--join-timeout-secs 60] [--quiet]`
//!
//! Prints a text report, then one JSON line. Exits 1 if audio did not flow (a listener received
//! nothing, or one lost more than 5%), 2 on bad arguments or a failed setup. The server needs
//! raised join limits for more than a handful of clients: see `tests/loadgen.toml` and
//! `docs/benchmarks.md`. The logic is `stoa_tests::loadgen`.

use std::process::ExitCode;
use std::time::Duration;

use stoa_tests::loadgen::{Options, run};

const USAGE: &str = "usage: stoa-loadgen --url http://127.0.0.1:PORT [--api-key KEY] [--speakers M] [--listeners N] [--seconds S] [--server-pid PID] [--allow-remote] [--join-concurrency C] [--join-timeout-secs T] [--quiet]";

fn parse() -> Result<Options, String> {
    let mut options = Options {
        api_key: std::env::var("STOA_API_KEY").unwrap_or_default(),
        ..Options::default()
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        fn num<T: std::str::FromStr>(name: &str, v: String) -> Result<T, String> {
            v.parse().map_err(|_| format!("{name}: not a number: {v}"))
        }
        match arg.as_str() {
            "--url" => options.url = value("--url")?,
            "--api-key" => options.api_key = value("--api-key")?,
            "--speakers" => options.speakers = num("--speakers", value("--speakers")?)?,
            "--listeners" => options.listeners = num("--listeners", value("--listeners")?)?,
            "--seconds" => options.seconds = num("--seconds", value("--seconds")?)?,
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
            "--allow-remote" => options.allow_remote = true,
            "--quiet" => options.progress = false,
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if options.api_key.is_empty() {
        return Err(format!(
            "no operator key: --api-key or STOA_API_KEY\n{USAGE}"
        ));
    }
    if !(options.seconds > 0.0 && options.seconds <= 3600.0) {
        return Err("--seconds must be in (0, 3600]".to_owned());
    }
    Ok(options)
}

fn main() -> ExitCode {
    let options = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("stoa-loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
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
