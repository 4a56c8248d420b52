//! Protocol benchmark: no-op predictions through `hello` (cogrs runtime) and through the same
//! predictor in Python under coglet 0.23.1, same machine, same load generator, loopback only.
//! Prints a table (requests/s, p50, p99, resident memory, 409s) and writes JSON.
//!
//! `cargo run --release -p cog-tests --bin loadgen -- --requests 5000 [--json out.json]`
//! (build the release `hello` first: `cargo build --release -p cog-runtime --example hello`).

use cog_tests::{coglet_python, free_port, spawn_coglet, Server};
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};

struct Args {
    requests: usize,
    warmup: usize,
    time_limit: Duration,
    json: Option<PathBuf>,
    hello: PathBuf,
}

fn parse_args() -> Args {
    let mut a = Args {
        requests: 5000,
        warmup: 300,
        time_limit: Duration::from_secs(120),
        json: None,
        hello: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/examples/hello"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--requests" => a.requests = val().parse().expect("--requests N"),
            "--warmup" => a.warmup = val().parse().expect("--warmup N"),
            "--time-limit" => a.time_limit = Duration::from_secs(val().parse().expect("seconds")),
            "--json" => a.json = Some(PathBuf::from(val())),
            "--hello" => a.hello = PathBuf::from(val()),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

/// Resident memory of a process and all its descendants, in bytes.
fn tree_rss(pid: u32) -> u64 {
    let mut total = 0;
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{p}/status")) {
            for line in status.lines() {
                if let Some(kb) = line.strip_prefix("VmRSS:") {
                    total += kb
                        .trim()
                        .trim_end_matches(" kB")
                        .trim()
                        .parse::<u64>()
                        .unwrap_or(0)
                        * 1024;
                }
            }
        }
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in tasks.flatten() {
                if let Ok(children) = std::fs::read_to_string(t.path().join("children")) {
                    stack.extend(
                        children
                            .split_whitespace()
                            .filter_map(|c| c.parse::<u32>().ok()),
                    );
                }
            }
        }
    }
    total
}

struct Result {
    name: &'static str,
    done: usize,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    rss_mb: f64,
    conflicts: usize,
    errors: usize,
}

async fn run(name: &'static str, server: &Server, args: &Args) -> Result {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    let url = server.url("/predictions");
    let body = json!({"input": {"text": "x"}}).to_string();
    let one = || {
        client
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
    };
    for _ in 0..args.warmup {
        let _ = one().await.map(|r| r.bytes());
    }
    let mut latencies = Vec::with_capacity(args.requests);
    let (mut conflicts, mut errors) = (0, 0);
    let start = Instant::now();
    for _ in 0..args.requests {
        if start.elapsed() > args.time_limit {
            break;
        }
        let t = Instant::now();
        match one().await {
            Ok(resp) => {
                let code = resp.status().as_u16();
                let _ = resp.bytes().await;
                match code {
                    200 => {}
                    409 => conflicts += 1,
                    _ => errors += 1,
                }
            }
            Err(_) => errors += 1,
        }
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];
    Result {
        name,
        done: latencies.len(),
        rps: latencies.len() as f64 / elapsed,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        rss_mb: tree_rss(server.child.id()) as f64 / 1e6,
        conflicts,
        errors,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = parse_args();
    assert!(
        args.hello.exists(),
        "{} missing: cargo build --release -p cog-runtime --example hello",
        args.hello.display()
    );
    let _ = coglet_python();
    let _ = free_port();
    let ours = Server::start(&args.hello, &[], &[("COG_LOG_LEVEL", "warn")]).await;
    let r_ours = run("cogrs (hello)", &ours, &args).await;
    drop(ours);
    let (theirs, _dir) = spawn_coglet(&[]);
    theirs.wait_status("READY", Duration::from_secs(60)).await;
    let r_theirs = run("coglet 0.23.1", &theirs, &args).await;
    drop(theirs);

    println!("| server | requests | requests/s | p50 ms | p99 ms | resident MB | 409s | errors |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in [&r_ours, &r_theirs] {
        println!(
            "| {} | {} | {:.0} | {:.3} | {:.3} | {:.1} | {} | {} |",
            r.name, r.done, r.rps, r.p50_ms, r.p99_ms, r.rss_mb, r.conflicts, r.errors
        );
    }
    println!(
        "| ratio (cogrs / coglet) | | {:.2}x | {:.2}x | {:.2}x | {:.2}x | | |",
        r_ours.rps / r_theirs.rps,
        r_ours.p50_ms / r_theirs.p50_ms,
        r_ours.p99_ms / r_theirs.p99_ms,
        r_ours.rss_mb / r_theirs.rss_mb
    );
    if let Some(path) = &args.json {
        let row = |r: &Result| {
            json!({"server": r.name, "requests": r.done, "rps": r.rps, "p50_ms": r.p50_ms,
                                      "p99_ms": r.p99_ms, "rss_mb": r.rss_mb, "conflicts": r.conflicts, "errors": r.errors})
        };
        std::fs::write(
            path,
            serde_json::to_string_pretty(&json!([row(&r_ours), row(&r_theirs)])).unwrap(),
        )
        .unwrap();
    }
}
