//! Shared by the reliability tests (`tests/tests/reliability_*.rs`, small counts, in CI) and the
//! campaign (`cargo run --release -p cog-tests --bin reliability`, large counts, writes
//! RELIABILITY.md): real `hello`/`cogrs` processes on 127.0.0.1, a real webhook receiver whose
//! behaviour can be scripted (errors, sleeps past the client's timeout, not listening at all),
//! and the load driver. Every scenario is bounded in count and time.
#![allow(dead_code)]

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{any, post};
use axum::Router;
use cog_tests::{free_port, Server};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `VmRSS` (KiB) and the number of open file descriptors of a process, from /proc.
pub fn proc_stats(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    (rss, fds)
}

/// Files and folders under `dir`, recursively (for "no temp files left" checks).
pub fn list_tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p.clone());
                }
                out.push(p);
            }
        }
    }
    out
}

/// Starts `hello serve` with `concurrency.max = slots` (a cog.yaml in its own working folder)
/// and waits for READY.
pub async fn hello_with_slots(slots: usize, args: &[&str], env: &[(&str, &str)]) -> HelloServer {
    let cwd = tempfile::tempdir().unwrap();
    std::fs::write(
        cwd.path().join("cog.yaml"),
        format!("concurrency:\n  max: {slots}\n"),
    )
    .unwrap();
    let port = free_port();
    let mut cmd = Command::new(cog_tests::hello_bin());
    cmd.arg("serve")
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(args)
        .current_dir(cwd.path());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let server = Server::spawn_command(cmd, port);
    server.wait_status("READY", Duration::from_secs(60)).await;
    HelloServer { server, _cwd: cwd }
}

pub struct HelloServer {
    pub server: Server,
    _cwd: tempfile::TempDir,
}

impl std::ops::Deref for HelloServer {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.server
    }
}

impl std::ops::DerefMut for HelloServer {
    fn deref_mut(&mut self) -> &mut Server {
        &mut self.server
    }
}

/// How the webhook receiver answers one request.
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    Status(u16),
    /// Sleeps this long before answering 200 (past the sender's timeout, it never sees the answer).
    Sleep(Duration),
}

/// One webhook the receiver got.
#[derive(Debug, Clone)]
pub struct Hooked {
    pub body: Value,
    pub at: Instant,
    /// The receiver answered 2xx and the handler ran to its end (the sender saw the answer,
    /// unless it gave up first).
    pub acked: bool,
    pub index: usize,
}

#[derive(Default)]
struct HookState {
    got: Mutex<Vec<Hooked>>,
    script: Mutex<Vec<Answer>>,
    /// Answers for terminal webhooks only (`status` is terminal), taken before `script`.
    terminal_script: Mutex<Vec<Answer>>,
    secret_seen: Mutex<Vec<String>>,
}

pub fn is_terminal(status: &Value) -> bool {
    matches!(status.as_str(), Some("succeeded" | "failed" | "canceled"))
}

/// A webhook receiver on 127.0.0.1 that records every POST and answers by a script.
pub struct Hook {
    pub url: String,
    pub port: u16,
    state: Arc<HookState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Hook {
    pub async fn start() -> Hook {
        Self::start_on(0, vec![], vec![]).await
    }

    /// Binds `port` (0: any) and answers the first requests by `script`, the first terminal
    /// webhooks by `terminal_script`; 200 afterwards.
    pub async fn start_on(port: u16, script: Vec<Answer>, terminal_script: Vec<Answer>) -> Hook {
        let state = Arc::new(HookState {
            script: Mutex::new(script),
            terminal_script: Mutex::new(terminal_script),
            ..Default::default()
        });
        let app = Router::new()
            .route("/hook", post(hook_handler))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the webhook port");
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Hook {
            url: format!("http://127.0.0.1:{port}/hook"),
            port,
            state,
            task,
        }
    }

    pub fn received(&self) -> Vec<Hooked> {
        self.state.got.lock().unwrap().clone()
    }

    /// Terminal webhooks the receiver acknowledged, by prediction id.
    pub fn acked_terminals(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for h in self.received() {
            if h.acked && is_terminal(&h.body["status"]) {
                *m.entry(h.body["id"].as_str().unwrap_or("").to_string())
                    .or_insert(0) += 1;
            }
        }
        m
    }

    /// Waits until `n` distinct predictions have an acknowledged terminal webhook, or `limit`.
    pub async fn wait_terminals(&self, n: usize, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.acked_terminals().len() >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        self.acked_terminals().len() >= n
    }
}

async fn hook_handler(
    State(s): State<Arc<HookState>>,
    _headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let terminal = is_terminal(&v["status"]);
    let answer = {
        let mut t = s.terminal_script.lock().unwrap();
        if terminal && !t.is_empty() {
            Some(t.remove(0))
        } else {
            let mut sc = s.script.lock().unwrap();
            if sc.is_empty() {
                None
            } else {
                Some(sc.remove(0))
            }
        }
    };
    let index = {
        let mut got = s.got.lock().unwrap();
        got.push(Hooked {
            body: v,
            at: Instant::now(),
            acked: false,
            index: 0,
        });
        let i = got.len() - 1;
        got[i].index = i;
        i
    };
    let code = match answer {
        None => 200,
        Some(Answer::Status(c)) => c,
        Some(Answer::Sleep(d)) => {
            // Dropped (and never acked) if the sender gives up first.
            tokio::time::sleep(d).await;
            200
        }
    };
    if (200..300).contains(&code) {
        s.got.lock().unwrap()[index].acked = true;
    }
    StatusCode::from_u16(code).unwrap()
}

/// A file host on 127.0.0.1 with hostile behaviours: `/drip` sends a byte every 100 ms forever,
/// `/endless` streams zeros forever without a length, `/big` announces a huge length, `/stall`
/// answers headers then nothing, and any other path answers `bytes` (so hostile file names in
/// URLs can be served).
pub struct FileHost {
    pub base: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FileHost {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FileHost {
    pub async fn start(bytes: Vec<u8>) -> FileHost {
        let bytes = Bytes::from(bytes);
        let app = Router::new()
            .route(
                "/drip",
                any(|| async {
                    let s = futures::stream::unfold(0u64, |n| async move {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Some((Ok::<_, std::io::Error>(Bytes::from_static(b"x")), n + 1))
                    });
                    Body::from_stream(s)
                }),
            )
            .route(
                "/endless",
                any(|| async {
                    let chunk = Bytes::from(vec![0u8; 64 * 1024]);
                    let s = futures::stream::repeat_with(move || {
                        Ok::<_, std::io::Error>(chunk.clone())
                    });
                    Body::from_stream(s)
                }),
            )
            .route(
                "/big",
                any(|| async {
                    (
                        [("content-length", (10u64 << 30).to_string())],
                        Body::from_stream(
                            futures::stream::pending::<Result<Bytes, std::io::Error>>(),
                        ),
                    )
                }),
            )
            .route(
                "/stall",
                any(|| async {
                    Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>())
                }),
            )
            .fallback(any(move || {
                let b = bytes.clone();
                async move { b }
            }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FileHost { base, task }
    }
}

/// An upload target that accepts connections and never answers (reads the request, then waits).
pub async fn hanging_upload_target() -> (String, tokio::task::JoinHandle<()>) {
    let app = Router::new().fallback(any(|| async {
        futures::future::pending::<()>().await;
        StatusCode::OK
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/upload", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (base, task)
}

/// POSTs a prediction; (status code, body or Null). Panics only if the client itself breaks.
pub async fn post_json(
    client: &reqwest::Client,
    server: &Server,
    body: &Value,
    async_: bool,
) -> Result<(u16, Value), String> {
    let mut req = client.post(server.url("/predictions")).json(body);
    if async_ {
        req = req.header("prefer", "respond-async");
    }
    let resp = req.send().await.map_err(|e| e.to_string())?;
    let code = resp.status().as_u16();
    let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
    Ok((code, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
}

/// Parameters of a load run against a hello server.
#[derive(Debug, Clone)]
pub struct LoadParams {
    pub slots: usize,
    /// Concurrent clients sending async predictions (with a webhook).
    pub async_clients: usize,
    /// Concurrent clients sending sync predictions.
    pub sync_clients: usize,
    /// Stop after this many requests in all...
    pub requests: u64,
    /// ...or after this long, whichever comes first.
    pub time_limit: Duration,
    /// Seconds each prediction sleeps (so slots are really held).
    pub delay: f64,
    /// Requests before the "warm" RSS/fd sample.
    pub warmup: u64,
    /// A client waiting longer than this for one answer counts as a hang.
    pub hang_after: Duration,
    /// Clients behave: an async client waits `delay` after a 202, any client 2 ms after a 409.
    /// Off, they hammer (most requests are then 409s, which is the point of some runs).
    pub pace: bool,
}

#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub requests: u64,
    pub elapsed: Duration,
    pub accepted_async: u64,
    pub accepted_sync: u64,
    pub conflicts: u64,
    /// Any answer that is not 200/202/409 (code -> count).
    pub unexpected: BTreeMap<u16, u64>,
    /// Requests that got no answer within `hang_after`, or a transport error.
    pub hangs_or_errors: u64,
    pub first_error: Option<String>,
    /// Sync answers that were 200 but not a terminal prediction.
    pub sync_not_terminal: u64,
    /// Terminal statuses seen (sync bodies and terminal webhooks).
    pub terminal_statuses: BTreeMap<String, u64>,
    /// Accepted async predictions with no acknowledged terminal webhook.
    pub missing_terminal_webhooks: u64,
    /// Predictions with more than one acknowledged terminal webhook.
    pub duplicate_terminal_webhooks: u64,
    /// Webhooks for a prediction received after its terminal webhook.
    pub after_terminal: u64,
    pub webhooks_received: u64,
    pub max_409_ms: f64,
    pub rss_warm_kb: u64,
    pub rss_end_kb: u64,
    pub fds_warm: usize,
    pub fds_end: usize,
    pub rss_max_kb: u64,
    pub fds_max: usize,
    /// Open fds once the server's idle keep-alive connections (to the webhook receiver; reqwest
    /// closes them after 90 s) are gone: waited for only when `fds_end` is above the slack.
    pub fds_after_idle: usize,
    pub idle_wait: Duration,
}

impl LoadReport {
    /// What must hold; each failure as a sentence.
    pub fn violations(&self, rss_slack_kb: u64, fd_slack: usize) -> Vec<String> {
        let mut v = Vec::new();
        if !self.unexpected.is_empty() {
            v.push(format!("unexpected status codes: {:?}", self.unexpected));
        }
        if self.hangs_or_errors > 0 {
            v.push(format!(
                "{} requests hung or failed in transport (first: {:?})",
                self.hangs_or_errors, self.first_error
            ));
        }
        if self.sync_not_terminal > 0 {
            v.push(format!(
                "{} sync answers were not terminal",
                self.sync_not_terminal
            ));
        }
        if self.missing_terminal_webhooks > 0 {
            v.push(format!(
                "{} accepted async predictions got no terminal webhook",
                self.missing_terminal_webhooks
            ));
        }
        if self.duplicate_terminal_webhooks > 0 {
            v.push(format!(
                "{} predictions got more than one terminal webhook",
                self.duplicate_terminal_webhooks
            ));
        }
        if self.after_terminal > 0 {
            v.push(format!(
                "{} webhooks arrived after their prediction's terminal one",
                self.after_terminal
            ));
        }
        if self.rss_end_kb > self.rss_warm_kb + rss_slack_kb {
            v.push(format!(
                "RSS grew from {} KiB to {} KiB (slack {rss_slack_kb} KiB)",
                self.rss_warm_kb, self.rss_end_kb
            ));
        }
        if self.fds_after_idle > self.fds_warm + fd_slack {
            v.push(format!(
                "open fds grew from {} to {} and were still {} after {:.0} s idle (slack {fd_slack})",
                self.fds_warm,
                self.fds_end,
                self.fds_after_idle,
                self.idle_wait.as_secs_f64()
            ));
        }
        v
    }
}

#[derive(Default)]
struct Tally {
    accepted_async: u64,
    accepted_sync: u64,
    conflicts: u64,
    unexpected: BTreeMap<u16, u64>,
    hangs_or_errors: u64,
    first_error: Option<String>,
    sync_not_terminal: u64,
    terminal_statuses: BTreeMap<String, u64>,
    async_ids: Vec<String>,
    max_409_ms: f64,
}

/// Drives `server` (a hello with `params.slots` slots) with async and sync clients at once.
/// Every tenth prediction asks to fail; async ones send all webhook events to `hook`.
pub async fn run_load(server: &Server, hook: &Hook, params: &LoadParams) -> LoadReport {
    let pid = server.child.id();
    let client = reqwest::Client::builder()
        .timeout(params.hang_after)
        .pool_max_idle_per_host(params.async_clients + params.sync_clients)
        .build()
        .unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let warm = Arc::new(Mutex::new(None::<(u64, usize)>));
    let peak = Arc::new(Mutex::new((0u64, 0usize)));
    let start = Instant::now();
    let mut tasks = Vec::new();
    let clients = params.async_clients + params.sync_clients;
    for c in 0..clients {
        let is_async = c < params.async_clients;
        let client = client.clone();
        let sent = sent.clone();
        let tally = tally.clone();
        let warm = warm.clone();
        let peak = peak.clone();
        let p = params.clone();
        let base = server.base.clone();
        let hook_url = hook.url.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let n = sent.fetch_add(1, Ordering::SeqCst);
                if n >= p.requests || start.elapsed() > p.time_limit {
                    break;
                }
                if n == p.warmup || n.is_multiple_of(500) {
                    let s = proc_stats(pid);
                    if n == p.warmup {
                        *warm.lock().unwrap() = Some(s);
                    }
                    let mut pk = peak.lock().unwrap();
                    pk.0 = pk.0.max(s.0);
                    pk.1 = pk.1.max(s.1);
                }
                let id = format!("load-{n}");
                let mut body = json!({
                    "id": id,
                    "input": {"text": format!("t{n}"), "delay": p.delay, "fail": n % 10 == 9},
                });
                if is_async {
                    body["webhook"] = json!(hook_url);
                }
                let t0 = Instant::now();
                let mut req = client.post(format!("{base}/predictions")).json(&body);
                if is_async {
                    req = req.header("prefer", "respond-async");
                }
                let result = async {
                    let resp = req.send().await?;
                    let code = resp.status().as_u16();
                    let body: Value = resp.json().await.unwrap_or(Value::Null);
                    Ok::<_, reqwest::Error>((code, body))
                }
                .await;
                let ms = t0.elapsed().as_secs_f64() * 1000.0;
                let pause = match &result {
                    Ok((202, _)) if p.pace => Duration::from_secs_f64(p.delay),
                    Ok((409, _)) if p.pace => Duration::from_millis(2),
                    _ => Duration::ZERO,
                };
                {
                    let mut t = tally.lock().unwrap();
                    match result {
                        Err(e) => {
                            t.hangs_or_errors += 1;
                            t.first_error.get_or_insert_with(|| e.to_string());
                        }
                        Ok((202, _)) if is_async => {
                            t.accepted_async += 1;
                            t.async_ids.push(id);
                        }
                        Ok((200, b)) if !is_async => {
                            t.accepted_sync += 1;
                            if is_terminal(&b["status"]) {
                                *t.terminal_statuses
                                    .entry(b["status"].as_str().unwrap().to_string())
                                    .or_insert(0) += 1;
                            } else {
                                t.sync_not_terminal += 1;
                            }
                        }
                        Ok((409, _)) => {
                            t.conflicts += 1;
                            t.max_409_ms = t.max_409_ms.max(ms);
                        }
                        Ok((code, _)) => *t.unexpected.entry(code).or_insert(0) += 1,
                    }
                }
                if pause.is_zero() {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(pause).await;
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed();
    let requests = sent.load(Ordering::SeqCst).min(params.requests);
    let tally = std::mem::take(&mut *tally.lock().unwrap());
    // Every accepted async prediction must end with one acknowledged terminal webhook.
    let want = tally.async_ids.len();
    let deadline = Duration::from_secs(30) + Duration::from_secs_f64(params.delay * 4.0);
    hook.wait_terminals(want, deadline).await;
    // Anything arriving late (a duplicate, an event after the terminal one) shows up by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = hook.received();
    let mut by_id: HashMap<&str, Vec<&Hooked>> = HashMap::new();
    for h in &got {
        by_id
            .entry(h.body["id"].as_str().unwrap_or(""))
            .or_default()
            .push(h);
    }
    let mut report = LoadReport {
        requests,
        elapsed,
        accepted_async: tally.accepted_async,
        accepted_sync: tally.accepted_sync,
        conflicts: tally.conflicts,
        unexpected: tally.unexpected,
        hangs_or_errors: tally.hangs_or_errors,
        first_error: tally.first_error,
        sync_not_terminal: tally.sync_not_terminal,
        terminal_statuses: tally.terminal_statuses,
        webhooks_received: got.len() as u64,
        max_409_ms: tally.max_409_ms,
        ..Default::default()
    };
    for id in &tally.async_ids {
        let hooks = by_id.get(id.as_str()).cloned().unwrap_or_default();
        let terminals: Vec<&&Hooked> = hooks
            .iter()
            .filter(|h| h.acked && is_terminal(&h.body["status"]))
            .collect();
        match terminals.len() {
            0 => report.missing_terminal_webhooks += 1,
            1 => {
                *report
                    .terminal_statuses
                    .entry(terminals[0].body["status"].as_str().unwrap().to_string())
                    .or_insert(0) += 1;
                let last = terminals[0].index;
                report.after_terminal += hooks.iter().filter(|h| h.index > last).count() as u64;
            }
            _ => report.duplicate_terminal_webhooks += 1,
        }
    }
    // Idle connections of the client pool are the client's, not the server's: drop them first.
    drop(client);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (rss, fds) = proc_stats(pid);
    let (wr, wf) = warm.lock().unwrap().unwrap_or((rss, fds));
    let pk = *peak.lock().unwrap();
    report.rss_warm_kb = wr;
    report.fds_warm = wf;
    report.rss_end_kb = rss;
    report.fds_end = fds;
    report.rss_max_kb = pk.0.max(rss);
    report.fds_max = pk.1.max(fds);
    // Idle keep-alive connections of the server's webhook client are a bounded pool, not a leak:
    // if the count is above the slack, wait (bounded) for reqwest's 90 s idle timeout.
    let t0 = Instant::now();
    let mut after = fds;
    while after > wf + 8 && t0.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        after = proc_stats(pid).1;
    }
    report.fds_after_idle = after;
    report.idle_wait = t0.elapsed();
    report
}

/// The outcome of one fault scenario, for assertions and for RELIABILITY.md.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub held: bool,
    pub detail: String,
}

impl Outcome {
    pub fn ok(detail: impl Into<String>) -> Self {
        Self {
            held: true,
            detail: detail.into(),
        }
    }
    pub fn fail(detail: impl Into<String>) -> Self {
        Self {
            held: false,
            detail: detail.into(),
        }
    }
}

macro_rules! check {
    ($cond:expr, $($fmt:tt)*) => {
        if !$cond {
            return Outcome::fail(format!($($fmt)*));
        }
    };
}

/// One async prediction with only the `completed` webhook to `hook_url`; returns its id.
async fn async_with_hook(server: &Server, id: &str, hook_url: &str, input: Value) -> u16 {
    let client = reqwest::Client::new();
    let body = json!({"id": id, "input": input, "webhook": hook_url, "webhook_events_filter": ["completed"]});
    post_json(&client, server, &body, true)
        .await
        .map(|(c, _)| c)
        .unwrap_or(0)
}

/// The webhook receiver answers 500, 503, 502, 429 to the terminal webhook, then 200.
pub async fn fault_webhook_5xx(server: &Server, round: usize) -> Outcome {
    let hook = Hook::start_on(
        0,
        vec![],
        vec![
            Answer::Status(500),
            Answer::Status(503),
            Answer::Status(502),
            Answer::Status(429),
        ],
    )
    .await;
    let id = format!("wh5xx-{round}");
    let code = async_with_hook(server, &id, &hook.url, json!({"text": "x"})).await;
    check!(code == 202, "POST answered {code}");
    check!(
        hook.wait_terminals(1, Duration::from_secs(30)).await,
        "no acknowledged terminal webhook within 30 s; got {:?}",
        hook.received().len()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = hook.received();
    check!(
        got.len() == 5,
        "expected 4 refused + 1 acked, got {}",
        got.len()
    );
    check!(hook.acked_terminals()[&id] == 1, "acked more than once");
    Outcome::ok(format!("{} attempts, last acked", got.len()))
}

/// Nothing listens on the webhook port for `down`, then a receiver starts there.
pub async fn fault_webhook_refused(server: &Server, round: usize, down: Duration) -> Outcome {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let id = format!("whrefused-{round}");
    let code = async_with_hook(server, &id, &url, json!({"text": "x"})).await;
    check!(code == 202, "POST answered {code}");
    tokio::time::sleep(down).await;
    let hook = Hook::start_on(port, vec![], vec![]).await;
    let t0 = Instant::now();
    check!(
        hook.wait_terminals(1, Duration::from_secs(40)).await,
        "no terminal webhook within 40 s of the receiver coming back"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    check!(
        hook.received().len() == 1,
        "{} deliveries",
        hook.received().len()
    );
    Outcome::ok(format!(
        "down {:.1} s; arrived {:.1} s after the receiver came back",
        down.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    ))
}

/// The receiver sleeps past the sender's 30 s timeout on the first terminal webhook.
pub async fn fault_webhook_timeout(server: &Server, round: usize) -> Outcome {
    let hook = Hook::start_on(0, vec![], vec![Answer::Sleep(Duration::from_secs(40))]).await;
    let id = format!("whtimeout-{round}");
    let t0 = Instant::now();
    let code = async_with_hook(server, &id, &hook.url, json!({"text": "x"})).await;
    check!(code == 202, "POST answered {code}");
    check!(
        hook.wait_terminals(1, Duration::from_secs(60)).await,
        "no acknowledged terminal webhook within 60 s"
    );
    let took = t0.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = hook.received();
    check!(
        got.len() == 2 && !got[0].acked && got[1].acked,
        "expected a timed-out attempt then an acked one: {:?}",
        got.iter().map(|h| h.acked).collect::<Vec<_>>()
    );
    Outcome::ok(format!("acked after {:.1} s", took.as_secs_f64()))
}

/// Output upload to a target that answers 500 / refuses / never answers: the prediction fails
/// with a clear error within a bound, and TMPDIR is empty afterwards.
pub async fn fault_upload(kind: &str) -> Outcome {
    let tmp = tempfile::tempdir().unwrap();
    let tmp_s = tmp.path().to_str().unwrap().to_string();
    let mut _hold = None;
    let target = match kind {
        "500" => {
            let r = cog_tests::Receiver::start(vec![500; 100], None).await;
            let u = format!("{}/upload", r.base);
            _hold = Some(Box::new(r) as Box<dyn std::any::Any + Send>);
            u
        }
        "refused" => format!("http://127.0.0.1:{}/upload", free_port()),
        "hang" => {
            let (u, t) = hanging_upload_target().await;
            _hold = Some(Box::new(AbortOnDrop(t)) as Box<dyn std::any::Any + Send>);
            u
        }
        _ => unreachable!(),
    };
    let server = hello_with_slots(
        1,
        &["--upload-url", &target],
        &[("TMPDIR", &tmp_s), ("COG_UPLOAD_TIMEOUT", "3")],
    )
    .await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let t0 = Instant::now();
    let r = post_json(
        &client,
        &server,
        &json!({"input": {"text": "up", "write_file": true}}),
        false,
    )
    .await;
    let took = t0.elapsed();
    let (code, body) = match r {
        Ok(x) => x,
        Err(e) => return Outcome::fail(format!("no answer: {e}")),
    };
    check!(code == 200, "answered {code}: {body}");
    check!(body["status"] == "failed", "status {}", body["status"]);
    let err = body["error"].as_str().unwrap_or("");
    check!(
        err.contains("failed to upload output file output.txt"),
        "unclear error: {err}"
    );
    check!(took < Duration::from_secs(30), "took {took:?}");
    // The next prediction (no file) still succeeds: the slot was freed.
    let (code, body) = post_json(&client, &server, &json!({"input": {"text": "next"}}), false)
        .await
        .unwrap_or((0, Value::Null));
    check!(
        code == 200 && body["status"] == "succeeded",
        "next: {code} {body}"
    );
    let left = list_tree(tmp.path());
    check!(left.is_empty(), "temp files left: {left:?}");
    Outcome::ok(format!("failed in {:.1} s: {err}", took.as_secs_f64()))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// File inputs from a host that drips, streams forever, lies about a huge length, or stalls:
/// each fails within its bound, names the limit, and leaves nothing in TMPDIR.
pub async fn fault_input_urls() -> Vec<(String, Outcome)> {
    let host = FileHost::start(vec![1u8; 100]).await;
    let tmp = tempfile::tempdir().unwrap();
    let tmp_s = tmp.path().to_str().unwrap().to_string();
    let server = hello_with_slots(
        1,
        &[],
        &[
            ("TMPDIR", &tmp_s),
            ("COG_INPUT_TIMEOUT", "2"),
            ("COG_INPUT_MAX_BYTES", "1048576"),
        ],
    )
    .await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut out = Vec::new();
    for (path, want) in [
        ("/drip", "longer than 2 s"),
        ("/stall", "longer than 2 s"),
        ("/endless", "larger than 1048576 bytes"),
        ("/big", "larger than 1048576 bytes"),
        ("/ok.png", "image of 100 bytes"),
    ] {
        let t0 = Instant::now();
        let r = post_json(
            &client,
            &server,
            &json!({"input": {"text": "x", "image": format!("{}{path}", host.base)}}),
            false,
        )
        .await;
        let took = t0.elapsed();
        let o = match r {
            Err(e) => Outcome::fail(format!("no answer: {e}")),
            Ok((code, body)) => {
                let text = format!("{} {}", body["error"], body["logs"]);
                if code != 200 {
                    Outcome::fail(format!("{code}: {body}"))
                } else if !text.contains(want) {
                    Outcome::fail(format!("wanted {want:?}: {text}"))
                } else if took > Duration::from_secs(10) {
                    Outcome::fail(format!("took {took:?}"))
                } else {
                    Outcome::ok(format!(
                        "{} in {:.1} s",
                        body["status"].as_str().unwrap_or(""),
                        took.as_secs_f64()
                    ))
                }
            }
        };
        out.push((path.to_string(), o));
    }
    let left = list_tree(tmp.path());
    out.push((
        "temp dir after all".into(),
        if left.is_empty() {
            Outcome::ok("empty")
        } else {
            Outcome::fail(format!("left: {left:?}"))
        },
    ));
    out
}

/// SIGTERM while an async prediction runs past `COG_SHUTDOWN_TIMEOUT`: the prediction is
/// cancelled, its terminal webhook delivered, the process exits 0; a new start serves.
pub async fn fault_sigterm_past_deadline(round: usize) -> Outcome {
    let hook = Hook::start().await;
    let mut server = hello_with_slots(2, &[], &[("COG_SHUTDOWN_TIMEOUT", "1")]).await;
    let client = reqwest::Client::new();
    let short = format!("drain-short-{round}");
    let long = format!("drain-long-{round}");
    for (id, delay) in [(&short, 0.5), (&long, 30.0)] {
        let body = json!({"id": id, "input": {"text": "x", "delay": delay}, "webhook": hook.url,
                          "webhook_events_filter": ["completed"]});
        let code = post_json(&client, &server, &body, true)
            .await
            .map(|r| r.0)
            .unwrap_or(0);
        check!(code == 202, "POST {id}: {code}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = Instant::now();
    server.signal(libc::SIGTERM);
    let status = tokio::task::block_in_place(|| server.wait_exit(Duration::from_secs(20)));
    check!(status.is_some(), "did not exit within 20 s of SIGTERM");
    check!(status.unwrap().success(), "exit status {:?}", status);
    let took = t0.elapsed();
    let got = hook.received();
    let status_of = |id: &str| {
        got.iter()
            .filter(|h| h.body["id"] == id && h.acked)
            .map(|h| h.body["status"].as_str().unwrap_or("").to_string())
            .collect::<Vec<_>>()
    };
    check!(
        status_of(&short) == ["succeeded"],
        "short: {:?}",
        status_of(&short)
    );
    check!(
        status_of(&long) == ["canceled"],
        "long: {:?}",
        status_of(&long)
    );
    let next = hello_with_slots(1, &[], &[]).await;
    let (code, body) = post_json(&client, &next, &json!({"input": {"text": "again"}}), false)
        .await
        .unwrap_or((0, Value::Null));
    check!(
        code == 200 && body["output"]["text"] == "AGAIN",
        "restart: {body}"
    );
    Outcome::ok(format!(
        "short drained, long canceled; exit 0 {:.1} s after SIGTERM",
        took.as_secs_f64()
    ))
}

// ---- the real model (smollm3 on the CPU) ----

/// Installs the default model once (as tests/tests/llm_predictors.rs does); its folder.
pub fn default_model_dir() -> PathBuf {
    static DONE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let out = Command::new(cog_tests::cogrs_bin())
            .args(["weights", "default"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cogrs weights default failed (run scripts/setup first):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::env::var_os("COG_DEFAULT_MODEL_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("../.cache/models/smollm2-135m-instruct")
            })
    })
    .clone()
}

/// A private copy of the compiled default model (top-level files only: no `.ort-cache/`).
pub fn copy_model() -> tempfile::TempDir {
    let src = default_model_dir();
    let dst = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(&src).unwrap().flatten() {
        if e.path().is_file() {
            std::fs::copy(e.path(), dst.path().join(e.file_name())).unwrap();
        }
    }
    dst
}

pub fn spawn_smollm3(weights: &Path, env: &[(&str, &str)]) -> Server {
    let w = weights.to_str().unwrap().to_string();
    Server::spawn(&cog_tests::cogrs_bin(), &["smollm3", "--weights", &w], env)
}

pub const FRANCE: &str = "The capital of France is Paris.";

pub async fn ask_france(server: &Server) -> Result<Value, String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let body = json!({"input": {"prompt": "What is the capital of France?", "temperature": 0, "mode": "no_think"}});
    let (code, body) = post_json(&client, server, &body, false).await?;
    if code == 200 && body["output"]["text"] == FRANCE {
        Ok(body)
    } else {
        Err(format!("{code}: {body}"))
    }
}

async fn wait_any(server: &Server, want: &[&str], limit: Duration) -> Option<Value> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(h) = server.health().await {
            if want.iter().any(|w| h["status"] == *w) {
                return Some(h);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// A byte of `model.onnx.data` flipped: setup fails, and the health check says why.
pub async fn fault_corrupt_weights(offset_frac: f64) -> Outcome {
    let dir = copy_model();
    let data = dir.path().join("model.onnx.data");
    let mut bytes = std::fs::read(&data).unwrap();
    let at = ((bytes.len() as f64 - 1.0) * offset_frac) as usize;
    bytes[at] ^= 0x5a;
    std::fs::write(&data, bytes).unwrap();
    let server = spawn_smollm3(dir.path(), &[]);
    let h = wait_any(
        &server,
        &["SETUP_FAILED", "READY"],
        Duration::from_secs(180),
    )
    .await;
    let Some(h) = h else {
        return Outcome::fail(format!("no verdict in 180 s:\n{}", server.log()));
    };
    check!(h["status"] == "SETUP_FAILED", "status {}", h["status"]);
    let logs = h["setup"]["logs"].as_str().unwrap_or("");
    check!(
        logs.contains("weights failed verification") && logs.contains("model.onnx.data"),
        "health logs do not say why: {logs}"
    );
    let client = reqwest::Client::new();
    let (code, _) = post_json(&client, &server, &json!({"input": {"prompt": "hi"}}), false)
        .await
        .unwrap_or((0, Value::Null));
    check!(code == 503, "prediction after failed setup answered {code}");
    let why = logs
        .lines()
        .find(|l| l.contains("verification"))
        .unwrap_or("")
        .to_string();
    Outcome::ok(format!("byte {at} flipped; SETUP_FAILED: {why}"))
}

/// Limits the address space of `pid` (RLIMIT_AS) to `bytes`.
pub fn limit_address_space(pid: u32, bytes: u64) -> std::io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: bytes,
    };
    // SAFETY: prlimit on our own child with a valid rlimit; no memory is shared.
    let r = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_AS,
            &lim,
            std::ptr::null_mut(),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `VmSize` of a process (KiB).
pub fn vm_size_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A real ONNX Runtime error inside a prediction: after setup and one warm prediction, the
/// server's address space is capped (RLIMIT_AS) a little above what it uses, so a long prompt's
/// buffers cannot be allocated by ONNX Runtime's arena. That prediction fails with the runtime's
/// error; the next (short) one succeeds; the health check stays READY.
pub async fn fault_ort_oom(weights: &Path, prompt_words: usize) -> Outcome {
    let server = spawn_smollm3(weights, &[]);
    if wait_any(&server, &["READY"], Duration::from_secs(180))
        .await
        .is_none()
    {
        return Outcome::fail(format!("not READY:\n{}", server.log()));
    }
    if let Err(e) = ask_france(&server).await {
        return Outcome::fail(format!("warm-up: {e}"));
    }
    let pid = server.child.id();
    let vm = vm_size_kb(pid);
    let cap = (vm + 256 * 1024) * 1024;
    if let Err(e) = limit_address_space(pid, cap) {
        return Outcome::fail(format!("prlimit: {e}"));
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap();
    let body = json!({"input": {"prompt": "word ".repeat(prompt_words), "max_new_tokens": 1, "temperature": 0}});
    let t0 = Instant::now();
    let r = post_json(&client, &server, &body, false).await;
    let (code, body) = match r {
        Ok(x) => x,
        Err(e) => {
            return Outcome::fail(format!(
                "no answer ({e}); alive: {:?}; log tail:\n{}",
                server_alive(&server),
                tail(&server.log(), 20)
            ))
        }
    };
    check!(code == 200, "{code}: {body}");
    check!(
        body["status"] == "failed",
        "long prompt did not fail: {}",
        body["status"]
    );
    let err = body["error"].as_str().unwrap_or("").to_string();
    check!(
        err.contains("onnx runtime"),
        "not an ONNX Runtime error: {err}"
    );
    let took = t0.elapsed();
    let h = server.health().await.unwrap_or(Value::Null);
    check!(
        h["status"] == "READY",
        "health after the error: {}",
        h["status"]
    );
    if let Err(e) = ask_france(&server).await {
        return Outcome::fail(format!("next prediction: {e}"));
    }
    let short: String = err.chars().take(160).collect();
    Outcome::ok(format!(
        "cap {} MiB; failed in {:.1} s: {short}…; next answered",
        cap >> 20,
        took.as_secs_f64()
    ))
}

fn server_alive(server: &Server) -> bool {
    std::path::Path::new(&format!("/proc/{}", server.child.id())).exists()
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// SIGTERM while smollm3 generates: with a deadline long enough the generation drains and
/// succeeds; past a short one it is cancelled. Either way exit 0, and the next start answers.
pub async fn fault_smollm3_sigterm(weights: &Path, deadline_s: &str) -> Outcome {
    let hook = Hook::start().await;
    let mut server = spawn_smollm3(weights, &[("COG_SHUTDOWN_TIMEOUT", deadline_s)]);
    if wait_any(&server, &["READY"], Duration::from_secs(180))
        .await
        .is_none()
    {
        return Outcome::fail(format!("not READY:\n{}", server.log()));
    }
    let client = reqwest::Client::new();
    let body = json!({"id": "gen", "input": {"prompt": "Write a long story about a dragon.", "temperature": 1.0,
                      "seed": 7, "max_new_tokens": if deadline_s == "0" { 2000 } else { 12 }},
                      "webhook": hook.url, "webhook_events_filter": ["output", "completed"]});
    let code = post_json(&client, &server, &body, true)
        .await
        .map(|r| r.0)
        .unwrap_or(0);
    check!(code == 202, "POST: {code}");
    // Wait for the first output chunk: the generation is really running.
    let start = Instant::now();
    while !hook.received().iter().any(|h| h.body["output"].is_array()) {
        check!(
            start.elapsed() < Duration::from_secs(60),
            "no output within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.signal(libc::SIGTERM);
    let t0 = Instant::now();
    let status = tokio::task::block_in_place(|| server.wait_exit(Duration::from_secs(120)));
    check!(status.is_some(), "no exit within 120 s of SIGTERM");
    check!(status.unwrap().success(), "exit {:?}", status);
    let took = t0.elapsed();
    let terminal: Vec<String> = hook
        .received()
        .iter()
        .filter(|h| h.acked && is_terminal(&h.body["status"]))
        .map(|h| h.body["status"].as_str().unwrap().to_string())
        .collect();
    let want = if deadline_s == "0" {
        "canceled"
    } else {
        "succeeded"
    };
    check!(
        terminal == [want],
        "terminal webhooks {terminal:?}, want [{want}]"
    );
    let next = spawn_smollm3(weights, &[]);
    if wait_any(&next, &["READY"], Duration::from_secs(180))
        .await
        .is_none()
    {
        return Outcome::fail(format!("restart not READY:\n{}", next.log()));
    }
    if let Err(e) = ask_france(&next).await {
        return Outcome::fail(format!("restart: {e}"));
    }
    Outcome::ok(format!(
        "{want}; exit 0 {:.1} s after SIGTERM; restart READY and answers",
        took.as_secs_f64()
    ))
}

/// Total bytes in `.ort-cache/` and whether a temporary (unfinished) cache file is there.
fn cache_state(dir: &Path) -> (u64, bool, Vec<String>) {
    let cache = dir.join(".ort-cache");
    let mut total = 0;
    let mut tmp = false;
    let mut names = Vec::new();
    if let Ok(rd) = std::fs::read_dir(&cache) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            total += e.metadata().map(|m| m.len()).unwrap_or(0);
            if name.contains(".tmp") {
                tmp = true;
            }
            names.push(name);
        }
    }
    (total, tmp, names)
}

/// SIGKILL during setup while the optimised-model cache is being written (`stage`: "hash" kills
/// while weights are being verified, "cache" once the cache file starts to grow); then a start
/// that must be READY and answer right, and a third start (from the cache) that must too.
pub async fn fault_kill_during_setup(stage: &str) -> Outcome {
    let dir = copy_model();
    let mut server = spawn_smollm3(dir.path(), &[]);
    let start = Instant::now();
    let mut killed_at = String::new();
    loop {
        check!(
            start.elapsed() < Duration::from_secs(180),
            "never reached stage {stage}"
        );
        let (bytes, _tmp, names) = cache_state(dir.path());
        let hit = match stage {
            "hash" => server.log().contains("setup started"),
            "cache" => names.iter().any(|n| n.ends_with(".data")) && bytes > (1 << 20),
            _ => unreachable!(),
        };
        if hit {
            server.signal(libc::SIGKILL);
            killed_at = format!(
                "{:.2} s, cache {} KiB {:?}",
                start.elapsed().as_secs_f64(),
                bytes >> 10,
                names
            );
            break;
        }
        if server
            .health()
            .await
            .is_some_and(|h| h["status"] == "READY")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    check!(!killed_at.is_empty(), "setup finished before the kill");
    let _ = tokio::task::block_in_place(|| server.wait_exit(Duration::from_secs(10)));
    drop(server);
    let mut answers = Vec::new();
    for attempt in ["after the kill", "from the cache"] {
        let s = spawn_smollm3(dir.path(), &[]);
        let h = wait_any(&s, &["READY", "SETUP_FAILED"], Duration::from_secs(180)).await;
        check!(
            h.as_ref().is_some_and(|h| h["status"] == "READY"),
            "start {attempt}: {:?}\n{}",
            h.map(|h| h["status"].clone()),
            tail(&s.log(), 20)
        );
        if let Err(e) = ask_france(&s).await {
            return Outcome::fail(format!("start {attempt}: {e}"));
        }
        let from_cache = s.log().contains("session from optimised cache");
        answers.push(format!(
            "{attempt}: READY, answered (cache used: {from_cache})"
        ));
    }
    let (_, tmp_left, names) = cache_state(dir.path());
    Outcome::ok(format!(
        "killed at {killed_at}; {}; leftover temp cache files: {}",
        answers.join("; "),
        if tmp_left {
            format!("yes {names:?}")
        } else {
            "none".into()
        }
    ))
}
