//! `stoa-cluster-bench`: one room served by a cluster of three nodes on this machine, loaded
//! by `stoa-loadgen`'s clients.
//!
//! A benchmark, not a test. It starts a throwaway Redis and PostgreSQL and three `stoa serve`
//! nodes sharing them (one media worker each, `--capacity` connections, `home_full_at` set
//! with `--home-full-at`), then runs the load generator against node A: one speaker, then
//! `--listeners` listeners, `--join-concurrency` at a time. Each redeems an invite; the join
//! answer sends it to the room's home while the home has room, and to an edge after that (the
//! least full node that serves the room already, then another), exactly as for any client.
//!
//! It reports, per node: the listeners it served, the server-added delay they saw (speaker's
//! send → listener's kernel receive stamp; an edge's less the home's is what crossing a node
//! adds), their loss, the node's CPU over the window (from `/proc`), and its relay datagrams
//! out and in (`/metrics`); and the joins per second. Usage:
//! `stoa-cluster-bench [--stoa target/release/stoa] [--listeners 300] [--capacity 150]
//! [--home-full-at 0.5] [--seconds 10] [--join-concurrency 32] [--json FILE]`.
//! Method and results: `docs/benchmarks.md`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use stoa_tests::loadgen::capacity::ServerProcess;
use stoa_tests::loadgen::procfs::CpuSample;
use stoa_tests::loadgen::{Options, run};
use stoa_tests::postgres::Postgres;
use stoa_tests::redis::Redis;

const NAMES: [&str; 3] = ["node-a", "node-b", "node-c"];

struct Args {
    stoa: PathBuf,
    listeners: usize,
    capacity: usize,
    home_full_at: f64,
    seconds: f64,
    join_concurrency: usize,
    json: Option<PathBuf>,
}

fn args() -> Result<Args, String> {
    let mut args = Args {
        stoa: PathBuf::from("target/release/stoa"),
        listeners: 300,
        capacity: 150,
        home_full_at: 0.5,
        seconds: 10.0,
        join_concurrency: 32,
        json: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        let bad = |e: String| format!("{arg}: {e}");
        match arg.as_str() {
            "--stoa" => args.stoa = value()?.into(),
            "--listeners" => args.listeners = value()?.parse().map_err(|e| bad(format!("{e}")))?,
            "--capacity" => args.capacity = value()?.parse().map_err(|e| bad(format!("{e}")))?,
            "--home-full-at" => {
                args.home_full_at = value()?.parse().map_err(|e| bad(format!("{e}")))?
            }
            "--seconds" => args.seconds = value()?.parse().map_err(|e| bad(format!("{e}")))?,
            "--join-concurrency" => {
                args.join_concurrency = value()?.parse().map_err(|e| bad(format!("{e}")))?
            }
            "--json" => args.json = Some(value()?.into()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

/// The sum of every series of `name` in a node's `/metrics`.
async fn metric(http: &reqwest::Client, url: &str, key: &str, name: &str) -> f64 {
    let Ok(answer) = http
        .get(format!("{url}/metrics"))
        .bearer_auth(key)
        .send()
        .await
    else {
        return 0.0;
    };
    let text = answer.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::main]
async fn main() {
    if let Err(e) = bench().await {
        eprintln!("stoa-cluster-bench: {e}");
        std::process::exit(2);
    }
}

async fn bench() -> Result<(), String> {
    let args = args()?;
    let redis = Redis::start();
    let pg = Postgres::start();
    let database = pg.fresh_database();
    let keys = tempfile::tempdir().map_err(|e| e.to_string())?;
    stoa::session::TokenSigner::load_or_create(&keys.path().join("signing.key"))
        .map_err(|e| e.to_string())?;
    let signing_key =
        std::fs::read_to_string(keys.path().join("signing.key")).map_err(|e| e.to_string())?;
    let api_key = format!(
        "stoa_sk_cluster_{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    );
    let extra = format!(
        "[cluster]\nheartbeat_ms = 200\nnode_ttl_ms = 1000\nhome_full_at = {}\n",
        args.home_full_at
    );
    let mut nodes = Vec::new();
    for name in NAMES {
        let env = [
            ("STOA_REDIS_URL", redis.url()),
            ("STOA_DATABASE_URL", database.clone()),
            ("STOA_NODE_NAME", name.to_owned()),
            ("STOA_SIGNING_KEY", signing_key.trim().to_owned()),
            (
                "RUST_LOG",
                std::env::var("STOA_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
            ),
        ];
        let node = ServerProcess::start_with(
            &args.stoa,
            None,
            args.capacity,
            &extra,
            &env,
            Some(api_key.clone()),
        )
        .await?;
        nodes.push(node);
    }
    let http = stoa::http_client::client();
    let signal_of = |url: &str| format!("{}/api/v1/signal", url.replacen("http://", "ws://", 1));

    // Every node's CPU, every half second, to cut the window out afterwards.
    let pids: Vec<u32> = nodes.iter().map(ServerProcess::pid).collect();
    let sampling = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(Instant, Vec<f64>)>::new()));
    let samples = sampling.clone();
    // And the most each held: resident memory, clients' sockets, sockets from edges.
    let peaks = std::sync::Arc::new(std::sync::Mutex::new(vec![(0u64, 0f64, 0f64); pids.len()]));
    let peaks_kept = peaks.clone();
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    let (sampler_http, sampler_key) = (http.clone(), api_key.clone());
    let sampler = tokio::spawn(async move {
        loop {
            let cpu: Vec<f64> = pids
                .iter()
                .map(|pid| CpuSample::read(*pid).map_or(0.0, |s| s.since(&CpuSample::default())))
                .collect();
            samples.lock().unwrap().push((Instant::now(), cpu));
            for (i, pid) in pids.iter().enumerate() {
                let rss = stoa_tests::loadgen::procfs::rss_kib(*pid).unwrap_or(0);
                let own =
                    metric(&sampler_http, &urls[i], &sampler_key, "stoa_signal_sockets").await;
                let relayed = metric(
                    &sampler_http,
                    &urls[i],
                    &sampler_key,
                    "stoa_signal_sockets_from_edges",
                )
                .await;
                let mut peaks = peaks_kept.lock().unwrap();
                let p = &mut peaks[i];
                *p = (p.0.max(rss), p.1.max(own), p.2.max(relayed));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let before: Vec<(f64, f64)> = {
        let mut v = Vec::new();
        for node in &nodes {
            v.push((
                metric(&http, &node.url, &api_key, "stoa_media_relay_out_total").await,
                metric(&http, &node.url, &api_key, "stoa_media_relay_in_total").await,
            ));
        }
        v
    };
    let options = Options {
        url: nodes[0].url.clone(),
        api_key: api_key.clone(),
        speakers: 1,
        listeners: args.listeners,
        seconds: args.seconds,
        join_concurrency: args.join_concurrency,
        ..Options::default()
    };
    let report = run(options).await?;
    let ended = Instant::now();
    sampler.abort();
    // The window ended half a second (the stragglers' tail) before the run returned.
    let window_end = ended - Duration::from_millis(500);
    let window_start = window_end - Duration::from_secs_f64(args.seconds);
    let samples = sampling.lock().unwrap().clone();
    let near = |at: Instant| {
        samples
            .iter()
            .min_by_key(|(t, _)| if *t > at { *t - at } else { at - *t })
            .cloned()
    };
    let (Some((t0, cpu0)), Some((t1, cpu1))) = (near(window_start), near(window_end)) else {
        return Err("no CPU samples".into());
    };
    let wall = t1.duration_since(t0).as_secs_f64().max(1e-3);

    println!("{}", report.text());
    let joins_per_s = report.joins_ok as f64 / report.all_connected_s.max(1e-3);
    println!(
        "{} listeners joined in {:.2} s ({joins_per_s:.0} joins/s), join p50 {:.0} ms p95 {:.0} ms",
        report.joins_ok, report.all_connected_s, report.join_ms.p50, report.join_ms.p95
    );
    let mut per_node = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let signal = signal_of(&node.url);
        let served: Vec<_> = report
            .per_listener
            .iter()
            .filter(|l| l.node == signal)
            .collect();
        let lost: u64 = served.iter().map(|l| l.lost).sum();
        let expected: u64 = served.iter().map(|l| l.expected).sum();
        let delay = report
            .node_delay_us
            .iter()
            .find(|(n, _)| *n == signal)
            .map(|(_, d)| d.json())
            .unwrap_or(Value::Null);
        let relay_out =
            metric(&http, &node.url, &api_key, "stoa_media_relay_out_total").await - before[i].0;
        let relay_in =
            metric(&http, &node.url, &api_key, "stoa_media_relay_in_total").await - before[i].1;
        let cpu = (cpu1[i] - cpu0[i]) / wall;
        let (rss_kib, sockets, from_edges) = peaks.lock().unwrap()[i];
        println!(
            "{}: {} listeners, delay µs {delay}, loss {:.4}%, CPU {:.1}% of a core, relay out {relay_out:.0} in {relay_in:.0} (whole run), at most {sockets:.0} sockets + {from_edges:.0} from edges and {rss_kib} KiB resident",
            NAMES[i],
            served.len(),
            100.0 * lost as f64 / expected.max(1) as f64,
            100.0 * cpu
        );
        per_node.push(json!({
            "node": NAMES[i],
            "listeners": served.len(),
            "delay_us": delay,
            "loss": lost as f64 / (expected as f64).max(1.0),
            "cpu_share": cpu,
            "relay_out": relay_out,
            "relay_in": relay_in,
            "peak_signal_sockets": sockets,
            "peak_signal_sockets_from_edges": from_edges,
            "peak_rss_kib": rss_kib,
        }));
    }
    let out = json!({
        "listeners": args.listeners,
        "capacity": args.capacity,
        "home_full_at": args.home_full_at,
        "joins_ok": report.joins_ok,
        "joins_failed": report.joins_failed,
        "joins_per_s": joins_per_s,
        "join_ms": report.join_ms.json(),
        "nodes": per_node,
        "loadgen": report.to_json(),
    });
    println!("{out}");
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&out).unwrap())
            .map_err(|e| e.to_string())?;
    }
    if let Ok(dir) = std::env::var("STOA_BENCH_LOGS_TO") {
        for (i, node) in nodes.iter().enumerate() {
            let _ = std::fs::write(format!("{dir}/{}.log", NAMES[i]), node.log());
        }
    }
    for node in nodes {
        node.stop().await;
    }
    drop(redis);
    Ok(())
}
