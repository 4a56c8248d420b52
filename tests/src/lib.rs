//! Harness for black-box tests: build and start the real binaries on 127.0.0.1, and real HTTP
//! servers that play the webhook receiver, the upload target and file hosts.

use axum::body::Bytes;
use axum::extract::{Path as AxPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use axum::Router;
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Builds (once per test process) and returns the path of a workspace binary or example.
fn build(args: &[&str], rel: &str) -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet"])
        .args(args)
        .current_dir(workspace_root())
        .status()
        .expect("cargo build");
    assert!(status.success(), "cargo build {args:?} failed");
    target_dir().join("debug").join(rel)
}

/// The `hello` example binary.
pub fn hello_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        build(
            &["-p", "cog-runtime", "--example", "hello"],
            "examples/hello",
        )
    })
    .clone()
}

/// The `cogrs` binary.
pub fn cogrs_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build(&["-p", "cog-predictors", "--bin", "cogrs"], "cogrs"))
        .clone()
}

/// coglet 0.23.1's Python, from the venv `scripts/setup.d/runtime-coglet` makes.
pub fn coglet_python() -> PathBuf {
    let python = std::env::var_os("COGLET_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".cache/coglet-venv/bin/python"));
    assert!(
        python.exists(),
        "coglet is not installed at {}: run scripts/setup (or scripts/setup.d/runtime-coglet)",
        python.display()
    );
    python
}

/// Serves `tests/coglet/predict.py` (hello in Python) under coglet, with hello's own OpenAPI
/// document in `.cog/openapi_schema.json` as `cog build` would write it. Not yet waited for.
pub fn spawn_coglet(env: &[(&str, &str)]) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        workspace_root().join("tests/coglet/predict.py"),
        dir.path().join("predict.py"),
    )
    .unwrap();
    let schema = Command::new(hello_bin()).arg("schema").output().unwrap();
    assert!(schema.status.success());
    std::fs::create_dir_all(dir.path().join(".cog")).unwrap();
    std::fs::write(dir.path().join(".cog/openapi_schema.json"), schema.stdout).unwrap();
    let python = coglet_python();
    let bin_dir = python.parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let port = free_port();
    let mut cmd = Command::new(&python);
    cmd.args(["-m", "cog.server.http", "--host", "127.0.0.1"])
        .current_dir(dir.path())
        .env("PORT", port.to_string())
        .env("COG_PREDICT_TYPE_STUB", "predict.py:Predictor")
        .env("PATH", path);
    for (k, v) in env {
        cmd.env(k, v);
    }
    (Server::spawn_command(cmd, port), dir)
}

/// A port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server process under test; killed when dropped.
pub struct Server {
    pub child: Child,
    pub port: u16,
    pub base: String,
    pub stderr: PathBuf,
    _logs: tempfile::TempDir,
}

impl Server {
    /// Starts `bin serve --host 127.0.0.1 --port N ARGS...` and waits for READY.
    pub async fn start(bin: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let server = Self::spawn(bin, args, env);
        server.wait_status("READY", Duration::from_secs(30)).await;
        server
    }

    pub fn spawn(bin: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let port = free_port();
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::spawn_command(cmd, port)
    }

    /// Starts any server command already told to listen on `port` of 127.0.0.1.
    pub fn spawn_command(mut cmd: Command, port: u16) -> Server {
        let logs = tempfile::tempdir().unwrap();
        let stderr = logs.path().join("stderr.log");
        let log_file = std::fs::File::create(&stderr).unwrap();
        cmd.stdout(log_file.try_clone().unwrap()).stderr(log_file);
        let child = cmd.spawn().expect("start server");
        Server {
            child,
            port,
            base: format!("http://127.0.0.1:{port}"),
            stderr,
            _logs: logs,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn health(&self) -> Option<Value> {
        let resp = reqwest::get(self.url("/health-check")).await.ok()?;
        resp.json().await.ok()
    }

    pub async fn wait_status(&self, status: &str, limit: Duration) {
        let start = Instant::now();
        loop {
            if let Some(h) = self.health().await {
                if h["status"] == status {
                    return;
                }
            }
            assert!(
                start.elapsed() < limit,
                "server never reported {status}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request a [`Receiver`] got.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

#[derive(Default)]
struct ReceiverState {
    got: Mutex<Vec<Received>>,
    /// Status codes to answer with before answering 200 (a receiver that is down, then back).
    failures: Mutex<Vec<u16>>,
    location: Option<String>,
    delay: Duration,
    files: Mutex<std::collections::HashMap<String, Bytes>>,
}

/// A real HTTP server on 127.0.0.1 recording what it receives: webhook receiver (`POST /hook`),
/// upload target (`PUT /upload/{name}`), and file host (`GET /files/{name}`, `GET /slow`).
pub struct Receiver {
    pub base: String,
    state: Arc<ReceiverState>,
    _task: tokio::task::JoinHandle<()>,
}

async fn record(
    state: &ReceiverState,
    method: &str,
    path: String,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    state.got.lock().unwrap().push(Received {
        method: method.into(),
        path,
        headers,
        body,
    });
    let code = {
        let mut f = state.failures.lock().unwrap();
        if f.is_empty() {
            200
        } else {
            f.remove(0)
        }
    };
    StatusCode::from_u16(code).unwrap()
}

impl Receiver {
    pub async fn start(failures: Vec<u16>, location: Option<String>) -> Receiver {
        let state = Arc::new(ReceiverState {
            failures: Mutex::new(failures),
            location,
            delay: Duration::from_secs(20),
            ..Default::default()
        });
        let app = Router::new()
            .route(
                "/hook",
                post(
                    |State(s): State<Arc<ReceiverState>>, h: HeaderMap, b: Bytes| async move {
                        record(&s, "POST", "/hook".into(), h, b).await
                    },
                ),
            )
            .route(
                "/upload/{name}",
                put(
                    |State(s): State<Arc<ReceiverState>>,
                     AxPath(name): AxPath<String>,
                     h: HeaderMap,
                     b: Bytes| async move {
                        let code = record(&s, "PUT", format!("/upload/{name}"), h, b).await;
                        let mut headers = HeaderMap::new();
                        if let Some(loc) = &s.location {
                            headers.insert("location", format!("{loc}/{name}").parse().unwrap());
                        }
                        (code, headers).into_response()
                    },
                ),
            )
            .route(
                "/files/{name}",
                get(
                    |State(s): State<Arc<ReceiverState>>, AxPath(name): AxPath<String>| async move {
                        match s.files.lock().unwrap().get(&name) {
                            Some(b) => (StatusCode::OK, b.clone()).into_response(),
                            None => StatusCode::NOT_FOUND.into_response(),
                        }
                    },
                ),
            )
            .route(
                "/slow",
                get(|State(s): State<Arc<ReceiverState>>| async move {
                    tokio::time::sleep(s.delay).await;
                    "late"
                }),
            )
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver {
            base,
            state,
            _task: task,
        }
    }

    pub fn host_file(&self, name: &str, bytes: Vec<u8>) -> String {
        self.state
            .files
            .lock()
            .unwrap()
            .insert(name.into(), Bytes::from(bytes));
        format!("{}/files/{name}", self.base)
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.got.lock().unwrap().clone()
    }

    /// Waits until `pred` holds for what was received.
    pub async fn wait_for(
        &self,
        limit: Duration,
        pred: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let start = Instant::now();
        loop {
            let got = self.received();
            if pred(&got) {
                return got;
            }
            assert!(
                start.elapsed() < limit,
                "receiver condition not met; got {got:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// An SSE body's string `output` chunks, concatenated, and its `completed` payload.
pub fn sse_output_and_completed(text: &str) -> (String, Value) {
    let mut chunks = String::new();
    let mut completed = Value::Null;
    for block in text.split("\n\n") {
        let event = block.lines().find_map(|l| l.strip_prefix("event: "));
        let data = block.lines().find_map(|l| l.strip_prefix("data: "));
        match (event, data) {
            (Some("output"), Some(d)) => {
                let v: Value = serde_json::from_str(d).unwrap_or(Value::Null);
                chunks.push_str(v["chunk"].as_str().unwrap_or_default());
            }
            (Some("completed"), Some(d)) => {
                completed = serde_json::from_str(d).unwrap_or(Value::Null)
            }
            _ => {}
        }
    }
    (chunks, completed)
}
