//! `stoa-soak`: runs one room for a long time with churn and checks that the server's memory,
//! descriptors, threads, tasks and connection counts come back to the baseline afterwards.
//!
//! Usage: `stoa-soak [--minutes M | --seconds S] [--listeners N] [--speakers K]
//! [--sample-secs S] [--seed N] [--json PATH] [--short] [--quiet]
//! [--server-bin PATH | --url URL [--api-key KEY | env STOA_API_KEY] [--pid PID]]`
//!
//! Without `--url` it starts `stoa serve` itself (the `stoa` binary beside this one, or
//! `--server-bin`, or `STOA_BIN`) on a temporary folder. Prints the samples and a verdict per
//! metric as text, writes the whole report as JSON to `--json` (if given). Exits 0 when every
//! metric came back, 1 when one did not (or the server died, or no audio flowed), 2 on bad
//! arguments or a failed setup. The logic is `stoa_tests::soak`; `scripts/soak.sh` wraps it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use stoa_tests::soak::{Options, run};

const USAGE: &str = "usage: stoa-soak [--minutes M | --seconds S] [--listeners N] [--speakers K] [--sample-secs S] [--seed N] [--json PATH] [--short] [--quiet] [--server-bin PATH | --url URL [--api-key KEY] [--pid PID]]";

fn parse() -> Result<(Options, Option<PathBuf>), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut options = if args.iter().any(|a| a == "--short") {
        Options::short()
    } else {
        Options::default()
    };
    options.api_key = std::env::var("STOA_API_KEY").ok().filter(|k| !k.is_empty());
    let mut json = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        fn num<T: std::str::FromStr>(name: &str, v: String) -> Result<T, String> {
            v.parse().map_err(|_| format!("{name}: not a number: {v}"))
        }
        match arg.as_str() {
            "--minutes" => {
                options.churn =
                    Duration::from_secs_f64(60.0 * num::<f64>("--minutes", value("--minutes")?)?)
            }
            "--seconds" => {
                options.churn = Duration::from_secs_f64(num("--seconds", value("--seconds")?)?)
            }
            "--listeners" => options.listeners = num("--listeners", value("--listeners")?)?,
            "--speakers" => options.speakers = num("--speakers", value("--speakers")?)?,
            "--sample-secs" => {
                options.sample_every =
                    Duration::from_secs_f64(num("--sample-secs", value("--sample-secs")?)?)
            }
            "--seed" => options.seed = num("--seed", value("--seed")?)?,
            "--json" => json = Some(PathBuf::from(value("--json")?)),
            "--server-bin" => options.server_bin = Some(PathBuf::from(value("--server-bin")?)),
            "--url" => options.url = Some(value("--url")?),
            "--api-key" => options.api_key = Some(value("--api-key")?),
            "--pid" => options.pid = Some(num("--pid", value("--pid")?)?),
            "--short" => {}
            "--quiet" => options.progress = false,
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if options.churn.is_zero() || options.sample_every.is_zero() {
        return Err("--minutes/--seconds and --sample-secs must be positive".to_owned());
    }
    Ok((options, json))
}

#[tokio::main]
async fn main() -> ExitCode {
    let (options, json) = match parse() {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let report = match run(options).await {
        Ok(report) => report,
        Err(e) => {
            eprintln!("stoa-soak: {e}");
            return ExitCode::from(2);
        }
    };
    print!("{}", report.text());
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&report.to_json()).expect("JSON");
        if let Err(e) = std::fs::write(&path, text) {
            eprintln!("cannot write {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
