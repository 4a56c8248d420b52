//! `weights_source` against a real HTTP server on 127.0.0.1 serving a small compiled folder:
//! full fetch with parallel range requests, the cache, resume after an interrupted fetch and after
//! a truncated partial file, a bad checksum, a server without range support, the local folder.

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use cog_predictors::weights_source::{
    cache_folder, resolve, resolve_with, verified_marker, Options,
};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

const CHUNK: u64 = 64 << 10;

type Req = (String, Option<String>, u16, u64);

struct Served {
    /// What the server sends for each name (may differ from what the manifest says).
    files: Mutex<BTreeMap<String, Vec<u8>>>,
    ranges: AtomicBool,
    /// Ranged requests starting at or past this offset of `big.onnx.data` get a 503.
    fail_from: AtomicU64,
    /// Body bytes sent for files other than the manifest.
    bytes: AtomicU64,
    /// (name, Range header, status, body bytes) of every request.
    log: Mutex<Vec<Req>>,
}

struct Server {
    url: String,
    state: Arc<Served>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The folder: a big file (several pieces, not a multiple of the piece size), a small one, an
/// empty one, and its manifest in the compiled-folder format.
fn folder() -> (BTreeMap<String, Vec<u8>>, Vec<u8>) {
    let mut files = BTreeMap::new();
    files.insert("big.onnx.data".to_string(), pseudo_random(300_000, 7));
    files.insert(
        "engine.json".to_string(),
        br#"{"format_version":1}"#.to_vec(),
    );
    files.insert("empty.bin".to_string(), Vec::new());
    files.insert("model.onnx".to_string(), pseudo_random(70_000, 11));
    let entries: serde_json::Map<String, serde_json::Value> = files
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                serde_json::json!({"sha256": hex::encode(Sha256::digest(v)), "size": v.len()}),
            )
        })
        .collect();
    let manifest = serde_json::json!({
        "format_version": 1, "architecture": "llama", "dtype": "fp16",
        "quantization": {"linear": "hqq4-g64"}, "files": entries,
        "tool_version": "test", "command": ["cogrs", "weights", "build"],
    });
    (files, serde_json::to_vec_pretty(&manifest).unwrap())
}

fn parse_range(h: &str, len: u64) -> Option<(u64, u64)> {
    let spec = h.strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let start: u64 = a.parse().ok()?;
    let end = if b.is_empty() {
        len.checked_sub(1)?
    } else {
        b.parse::<u64>().ok()?.min(len.checked_sub(1)?)
    };
    (start <= end).then_some((start, end))
}

async fn serve_file(
    State(st): State<Arc<Served>>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = st.files.lock().unwrap().get(&name).cloned();
    let (status, sent, resp) = match body {
        None => (
            404,
            0,
            Response::builder()
                .status(404)
                .body(Body::from("not found"))
                .unwrap(),
        ),
        Some(body) => {
            let len = body.len() as u64;
            let ranged = st
                .ranges
                .load(Ordering::SeqCst)
                .then(|| range.as_deref().and_then(|r| parse_range(r, len)))
                .flatten();
            match ranged {
                Some((start, _))
                    if name == "big.onnx.data" && start >= st.fail_from.load(Ordering::SeqCst) =>
                {
                    (
                        503,
                        0,
                        Response::builder()
                            .status(503)
                            .body(Body::from("unavailable"))
                            .unwrap(),
                    )
                }
                Some((start, end)) => {
                    let part = body[start as usize..=end as usize].to_vec();
                    if name != "manifest.json" {
                        st.bytes.fetch_add(part.len() as u64, Ordering::SeqCst);
                    }
                    (
                        206,
                        part.len() as u64,
                        Response::builder()
                            .status(StatusCode::PARTIAL_CONTENT)
                            .header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"))
                            .header(header::ACCEPT_RANGES, "bytes")
                            .body(Body::from(part))
                            .unwrap(),
                    )
                }
                None => {
                    if name != "manifest.json" {
                        st.bytes.fetch_add(len, Ordering::SeqCst);
                    }
                    (200, len, Response::new(Body::from(body)))
                }
            }
        }
    };
    st.log.lock().unwrap().push((name, range, status, sent));
    resp
}

fn start(files: BTreeMap<String, Vec<u8>>, manifest: Vec<u8>, ranges: bool) -> Server {
    let mut files = files;
    files.insert("manifest.json".into(), manifest);
    let state = Arc::new(Served {
        files: Mutex::new(files),
        ranges: AtomicBool::new(ranges),
        fail_from: AtomicU64::new(u64::MAX),
        bytes: AtomicU64::new(0),
        log: Mutex::new(Vec::new()),
    });
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let st = state.clone();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            let app = Router::new()
                .route("/weights/{*name}", get(serve_file))
                .with_state(st);
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
    });
    let addr = addr_rx.recv().unwrap();
    Server {
        url: format!("http://{addr}/weights"),
        state,
        shutdown: Some(tx),
        thread: Some(thread),
    }
}

fn options() -> Options {
    Options {
        connections: 4,
        chunk_size: CHUNK,
        attempts: 1,
    }
}

fn quiet(_: &str) {}

fn assert_folder(dir: &Path, files: &BTreeMap<String, Vec<u8>>) {
    for (name, want) in files {
        let got = std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(&got == want, "{name} differs");
    }
    assert!(dir.join("manifest.json").is_file());
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !name.ends_with(".part") && !name.ends_with(".part.done"),
            "left over: {name}"
        );
    }
}

/// Body bytes sent for one file since the log was cleared.
fn sent(server: &Server, name: &str) -> u64 {
    server
        .state
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.0 == name)
        .map(|r| r.3)
        .sum()
}

fn file_requests(server: &Server) -> Vec<Req> {
    server
        .state
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.0 != "manifest.json")
        .cloned()
        .collect()
}

#[test]
fn full_fetch_uses_parallel_range_requests_then_the_cache() {
    let (files, manifest) = folder();
    let server = start(files.clone(), manifest, true);
    let cache = tempfile::tempdir().unwrap();
    let lines = Mutex::new(Vec::new());
    let log = |l: &str| lines.lock().unwrap().push(l.to_string());
    let dir = resolve_with(&server.url, cache.path(), &options(), &log).unwrap();
    assert_eq!(dir, cache_folder(&server.url, cache.path()));
    assert_folder(&dir, &files);

    let reqs = file_requests(&server);
    let big: Vec<_> = reqs.iter().filter(|r| r.0 == "big.onnx.data").collect();
    // 300,000 bytes in 64 KiB pieces: 5 ranged requests, each answered 206.
    assert_eq!(big.len(), 5, "{big:?}");
    assert!(big.iter().all(|r| r.2 == 206 && r.1.is_some()), "{big:?}");
    let mut ranges: Vec<_> = big.iter().map(|r| r.1.clone().unwrap()).collect();
    ranges.sort();
    assert_eq!(
        ranges,
        [
            "bytes=0-65535",
            "bytes=131072-196607",
            "bytes=196608-262143",
            "bytes=262144-299999",
            "bytes=65536-131071"
        ]
    );
    // The empty file needs no request; every other byte is sent exactly once.
    assert!(!reqs.iter().any(|r| r.0 == "empty.bin"));
    let total: u64 = files.values().map(|v| v.len() as u64).sum();
    assert_eq!(server.state.bytes.load(Ordering::SeqCst), total);
    let lines = lines.lock().unwrap().clone();
    assert!(
        lines.iter().any(|l| l.contains("fetching 4 of 4 files")),
        "{lines:?}"
    );

    // Second start: only the manifest is read.
    server.state.log.lock().unwrap().clear();
    let again = resolve_with(&server.url, cache.path(), &options(), &quiet).unwrap();
    assert_eq!(again, dir);
    assert!(file_requests(&server).is_empty());

    // Server gone: the verified cache is used.
    let url = server.url.clone();
    drop(server);
    let offline = resolve_with(&url, cache.path(), &options(), &quiet).unwrap();
    assert_eq!(offline, dir);
    assert_folder(&offline, &files);
}

#[test]
fn an_interrupted_fetch_continues_where_it_stopped() {
    let (files, manifest) = folder();
    let server = start(files.clone(), manifest, true);
    let cache = tempfile::tempdir().unwrap();
    // Pieces of big.onnx.data from 128 KiB on fail: the fetch stops with an error.
    server.state.fail_from.store(2 * CHUNK, Ordering::SeqCst);
    let err = resolve_with(&server.url, cache.path(), &options(), &quiet).unwrap_err();
    assert!(err.to_string().contains("HTTP 503"), "{err}");
    let dir = cache_folder(&server.url, cache.path());
    assert!(dir.join("big.onnx.data.part").is_file());
    assert!(!dir.join("big.onnx.data").exists());
    let done = std::fs::read_to_string(dir.join("big.onnx.data.part.done")).unwrap();
    let done: Vec<u64> = done
        .split_whitespace()
        .map(|w| w.parse().unwrap())
        .collect();
    assert_eq!(done, [0, 1]);

    // The server recovers: only what is missing is fetched.
    server.state.fail_from.store(u64::MAX, Ordering::SeqCst);
    server.state.bytes.store(0, Ordering::SeqCst);
    server.state.log.lock().unwrap().clear();
    let dir = resolve_with(&server.url, cache.path(), &options(), &quiet).unwrap();
    assert_folder(&dir, &files);
    let big: Vec<_> = file_requests(&server)
        .into_iter()
        .filter(|r| r.0 == "big.onnx.data")
        .collect();
    assert_eq!(big.len(), 3, "{big:?}");
    assert_eq!(
        sent(&server, "big.onnx.data"),
        300_000 - 2 * CHUNK,
        "only the missing pieces of big.onnx.data are sent again"
    );
}

#[test]
fn a_truncated_partial_file_loses_only_the_pieces_past_its_end() {
    let (files, manifest) = folder();
    let server = start(files.clone(), manifest, true);
    let cache = tempfile::tempdir().unwrap();
    server.state.fail_from.store(3 * CHUNK, Ordering::SeqCst);
    resolve_with(&server.url, cache.path(), &options(), &quiet).unwrap_err();
    let dir = cache_folder(&server.url, cache.path());
    // Pieces 0, 1, 2 are recorded; cut the partial file inside piece 1 (a crash before the
    // data reached the disk).
    let part = dir.join("big.onnx.data.part");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&part)
        .unwrap()
        .set_len(CHUNK + 1000)
        .unwrap();
    server.state.fail_from.store(u64::MAX, Ordering::SeqCst);
    server.state.bytes.store(0, Ordering::SeqCst);
    server.state.log.lock().unwrap().clear();
    let dir = resolve_with(&server.url, cache.path(), &options(), &quiet).unwrap();
    assert_folder(&dir, &files);
    assert_eq!(sent(&server, "big.onnx.data"), 300_000 - CHUNK);
}

#[test]
fn a_bad_checksum_fails_naming_the_file_and_leaves_nothing_behind() {
    let (files, manifest) = folder();
    let server = start(files.clone(), manifest, true);
    let cache = tempfile::tempdir().unwrap();
    // The server's model.onnx is not the one the manifest describes (same size, one byte off).
    {
        let mut served = server.state.files.lock().unwrap();
        served.get_mut("model.onnx").unwrap()[12_345] ^= 0xff;
    }
    let err = resolve(&server.url, cache.path(), &quiet).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("model.onnx") && msg.contains("sha256"),
        "{msg}"
    );
    let want = hex::encode(Sha256::digest(&files["model.onnx"]));
    assert!(msg.contains(&want), "{msg}");
    let dir = cache_folder(&server.url, cache.path());
    assert!(!dir.join("model.onnx").exists());
    assert!(!dir.join("model.onnx.part").exists());
    assert!(!verified_marker(&dir).exists());

    // Fixed upstream: the next start succeeds.
    server
        .state
        .files
        .lock()
        .unwrap()
        .insert("model.onnx".into(), files["model.onnx"].clone());
    let dir = resolve(&server.url, cache.path(), &quiet).unwrap();
    assert_folder(&dir, &files);
}

#[test]
fn a_server_without_range_support_sends_whole_files() {
    let (files, manifest) = folder();
    let server = start(files.clone(), manifest, false);
    let cache = tempfile::tempdir().unwrap();
    let dir = resolve_with(&server.url, cache.path(), &options(), &quiet).unwrap();
    assert_folder(&dir, &files);
    let reqs = file_requests(&server);
    assert_eq!(reqs.len(), 3, "{reqs:?}"); // one per non-empty file
    assert!(reqs.iter().all(|r| r.1.is_none() && r.2 == 200), "{reqs:?}");
}

#[test]
fn a_stale_cached_file_is_fetched_again_and_a_local_folder_is_used_as_is() {
    let (files, manifest) = folder();
    let server = start(files.clone(), manifest, true);
    let cache = tempfile::tempdir().unwrap();
    let dir = resolve_with(&server.url, cache.path(), &options(), &quiet).unwrap();
    // Damage a cached file (same size) and drop the marker: it is checked and fetched again.
    let mut bytes = std::fs::read(dir.join("model.onnx")).unwrap();
    bytes[0] ^= 1;
    std::fs::write(dir.join("model.onnx"), bytes).unwrap();
    std::fs::remove_file(verified_marker(&dir)).unwrap();
    server.state.log.lock().unwrap().clear();
    resolve_with(&server.url, cache.path(), &options(), &quiet).unwrap();
    assert_folder(&dir, &files);
    let names: Vec<_> = file_requests(&server).into_iter().map(|r| r.0).collect();
    assert!(names.iter().all(|n| n == "model.onnx"), "{names:?}");
    assert!(!names.is_empty());

    // A local folder is used as it is; a missing one is an error.
    let got = resolve(dir.to_str().unwrap(), cache.path(), &quiet).unwrap();
    assert_eq!(got, dir);
    let err = resolve("/nonexistent/weights", cache.path(), &quiet).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/weights"), "{err}");
}
