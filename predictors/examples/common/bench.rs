//! What the benchmark examples share: peak device memory from nvidia-smi samples, folder sizes, and
//! the fresh measuring processes (each configuration is measured in its own process, so its start-up
//! and memory are its own).
// Each example includes this file and uses a subset of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub fn folder_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|it| {
            it.flatten()
                .filter(|e| !e.file_name().to_string_lossy().contains(".opt."))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Peak `memory.used` (MiB) over the process's life, from nvidia-smi samples every 50 ms.
pub struct VramSampler {
    peak: Arc<AtomicU64>,
    before: Option<u64>,
    child: Option<std::process::Child>,
}

impl VramSampler {
    pub fn start() -> VramSampler {
        let query = |extra: &[&str]| {
            Command::new("nvidia-smi")
                .args(["--query-gpu=memory.used", "--format=csv,noheader,nounits"])
                .args(extra)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .ok()
        };
        let before = query(&[])
            .and_then(|c| c.wait_with_output().ok())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse().ok()));
        let peak = Arc::new(AtomicU64::new(0));
        let mut child = query(&["-lms", "50"]);
        if let Some(c) = child.as_mut() {
            let out = c.stdout.take().expect("stdout");
            let peak = peak.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if let Ok(v) = line.trim().parse::<u64>() {
                        peak.fetch_max(v, Ordering::Relaxed);
                    }
                }
            });
        }
        VramSampler {
            peak,
            before,
            child,
        }
    }

    /// Peak above the memory in use when sampling started, in GB.
    pub fn peak_gb(&mut self) -> Option<f64> {
        std::thread::sleep(std::time::Duration::from_millis(150));
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let before = self.before?;
        let peak = self.peak.load(Ordering::Relaxed);
        (peak > 0).then(|| peak.saturating_sub(before) as f64 * 1024.0 * 1024.0 / 1e9)
    }
}

/// Seconds from spawning `cmd` (stdout piped) to its "ready" line: ORT library load, session from the
/// cache or optimised afresh, warm-up, i.e. what a server adds before it reports READY.
pub fn ready_seconds(mut cmd: Command) -> f64 {
    let t = std::time::Instant::now();
    let mut p = cmd.spawn().expect("spawn");
    let mut ready = None;
    for line in BufReader::new(p.stdout.take().expect("stdout")).lines() {
        if line.expect("child stdout").starts_with("ready") && ready.is_none() {
            ready = Some(t.elapsed().as_secs_f64());
        }
    }
    assert!(p.wait().expect("wait").success(), "measure process failed");
    ready.expect("child never became ready")
}

/// Runs `cmd` (stdout piped) to the end; its last JSON object line.
pub fn last_json(mut cmd: Command) -> serde_json::Value {
    let out = cmd.output().expect("spawn");
    assert!(out.status.success(), "measure process failed");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let last = text.lines().rfind(|l| l.starts_with('{')).expect("no JSON");
    serde_json::from_str(last).expect("JSON")
}
