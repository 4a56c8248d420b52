//! Where a predictor's weights come from at setup: a local compiled folder, used as it is, or an
//! `http(s)://` URL of one, fetched into a cache on a volume.
//!
//! A fetch reads `URL/manifest.json` (the compiled-folder manifest, see `cog_weights::format`:
//! every file with its sha256 and size), then every file listed there with parallel HTTP range
//! requests (`connections` at once, files cut into `chunk_size` pieces written in place). Progress
//! is kept beside each partial file (`NAME.part` plus `NAME.part.done`, the finished pieces), so an
//! interrupted fetch continues where it stopped; a partial file shorter than its finished pieces
//! claim (truncated) has those pieces fetched again. Every file is checked against the manifest's
//! sha256 before it takes its name; a mismatch removes the partial file and fails with an error
//! naming the file. A server that ignores `Range` still works: each file then comes in one
//! request, and a resumed fetch starts that file over.
//!
//! The cache (`COG_WEIGHTS_CACHE`, else `/var/cache/cogrs` where writable, else `.cache/weights`)
//! holds one folder per URL. Once a folder is complete and verified, a marker beside it records the
//! manifest's digest: the next start re-reads the manifest and, if it is unchanged, uses the folder
//! without hashing it again (and without the network if the server cannot be reached).

use cog_weights::format::{Manifest, FORMAT_VERSION};
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The marker written once a cached folder is complete and verified: beside the folder, not in
/// it, so that the folder holds exactly what its manifest lists (`cogrs weights verify` refuses
/// unlisted files).
pub fn verified_marker(folder: &Path) -> PathBuf {
    let mut name = folder.file_name().unwrap_or_default().to_os_string();
    name.push(".verified");
    folder.with_file_name(name)
}

#[derive(Debug, thiserror::Error)]
pub enum WeightsSourceError {
    #[error("weights folder {0} does not exist or is not a folder")]
    NotAFolder(PathBuf),
    #[error("fetching {url}: {message}")]
    Http { url: String, message: String },
    #[error("fetching {url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("the manifest at {url} is not valid: {message}")]
    Manifest { url: String, message: String },
    #[error("weights file {file}: sha256 {actual}, manifest says {expected} (the download is corrupt or the manifest is stale; the partial file was removed)")]
    Checksum {
        file: String,
        expected: String,
        actual: String,
    },
    #[error("weights file {file}: got {actual} bytes, manifest says {expected}")]
    Size {
        file: String,
        expected: u64,
        actual: u64,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WeightsSourceError + '_ {
    move |source| WeightsSourceError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How a fetch runs. `resolve` uses `Options::from_env()`.
#[derive(Debug, Clone)]
pub struct Options {
    /// Requests in flight at once (`COG_WEIGHTS_CONNECTIONS`, default 8).
    pub connections: usize,
    /// Bytes per range request (`COG_WEIGHTS_CHUNK_MB` MiB, default 32 MiB).
    pub chunk_size: u64,
    /// Tries per request before the fetch fails (transport errors and 5xx).
    pub attempts: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            connections: 8,
            chunk_size: 32 << 20,
            attempts: 3,
        }
    }
}

impl Options {
    pub fn from_env() -> Self {
        let mut o = Options::default();
        if let Some(n) = env_u64("COG_WEIGHTS_CONNECTIONS").filter(|n| *n > 0) {
            o.connections = n as usize;
        }
        if let Some(mb) = env_u64("COG_WEIGHTS_CHUNK_MB").filter(|n| *n > 0) {
            o.chunk_size = mb << 20;
        }
        o
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.trim().parse().ok()
}

/// The cache folder: `COG_WEIGHTS_CACHE`, else `/var/cache/cogrs` when it exists and is
/// writable (the container image makes it, a volume may be mounted there), else `.cache/weights`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("COG_WEIGHTS_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let var = Path::new("/var/cache/cogrs");
    if var.is_dir()
        && tempfile::Builder::new()
            .prefix(".probe")
            .tempfile_in(var)
            .is_ok()
    {
        return var.to_path_buf();
    }
    PathBuf::from(".cache/weights")
}

/// Resolves `weights` (a folder, or an `http(s)://` URL of a compiled folder) to a local folder,
/// fetching into `cache_dir` when it is a URL. `log` gets one line per step.
pub fn resolve(
    weights: &str,
    cache_dir: &Path,
    log: &dyn Fn(&str),
) -> Result<PathBuf, WeightsSourceError> {
    resolve_with(weights, cache_dir, &Options::from_env(), log)
}

/// `resolve` with explicit options.
pub fn resolve_with(
    weights: &str,
    cache_dir: &Path,
    options: &Options,
    log: &dyn Fn(&str),
) -> Result<PathBuf, WeightsSourceError> {
    if weights.starts_with("http://") || weights.starts_with("https://") {
        return fetch(weights.trim_end_matches('/'), cache_dir, options, log);
    }
    let dir = Path::new(weights);
    if !dir.is_dir() {
        return Err(WeightsSourceError::NotAFolder(dir.to_path_buf()));
    }
    log(&format!("weights: using the folder {}", dir.display()));
    Ok(dir.to_path_buf())
}

/// The cache folder for one URL: the first 16 hex digits of its sha256.
pub fn cache_folder(url: &str, cache_dir: &Path) -> PathBuf {
    let key = hex::encode(Sha256::digest(url.trim_end_matches('/').as_bytes()));
    cache_dir.join(&key[..16])
}

fn client() -> Result<reqwest::blocking::Client, WeightsSourceError> {
    reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        // Per request (one piece, 32 MiB by default): a stalled connection fails the request,
        // which is retried, rather than hanging setup.
        .timeout(Duration::from_secs(300))
        .build()
        .map_err(|e| WeightsSourceError::Http {
            url: String::new(),
            message: e.to_string(),
        })
}

fn fetch(
    url: &str,
    cache_dir: &Path,
    options: &Options,
    log: &dyn Fn(&str),
) -> Result<PathBuf, WeightsSourceError> {
    let dir = cache_folder(url, cache_dir);
    fs::create_dir_all(&dir).map_err(io(&dir))?;
    let client = client()?;
    let manifest_url = format!("{url}/manifest.json");
    let marker = verified_marker(&dir);

    // The manifest, and whether the server honours Range (asked on the manifest itself).
    let (manifest_bytes, ranges) = match get_manifest(&client, &manifest_url, options) {
        Ok(got) => got,
        Err(e) => {
            // Offline start with a verified cache: use it.
            let cached = fs::read(dir.join("manifest.json")).ok();
            if let (Some(bytes), Ok(mark)) = (cached, fs::read_to_string(&marker)) {
                if mark.trim() == hex::encode(Sha256::digest(&bytes)) {
                    log(&format!(
                        "weights: {e}; using the verified cache {}",
                        dir.display()
                    ));
                    return Ok(dir);
                }
            }
            return Err(e);
        }
    };
    let manifest: Manifest =
        serde_json::from_slice(&manifest_bytes).map_err(|e| WeightsSourceError::Manifest {
            url: manifest_url.clone(),
            message: e.to_string(),
        })?;
    if manifest.format_version > FORMAT_VERSION {
        return Err(WeightsSourceError::Manifest {
            url: manifest_url,
            message: format!(
                "format_version {} is newer than this build's {FORMAT_VERSION}",
                manifest.format_version
            ),
        });
    }
    for name in manifest.files.keys() {
        if !safe_relative(name) {
            return Err(WeightsSourceError::Manifest {
                url: manifest_url,
                message: format!("file name {name:?} is not a plain relative path"),
            });
        }
    }
    let digest = hex::encode(Sha256::digest(&manifest_bytes));
    let verified = fs::read_to_string(&marker).is_ok_and(|m| m.trim() == digest)
        && fs::read(dir.join("manifest.json")).is_ok_and(|b| b == manifest_bytes)
        && manifest.files.iter().all(|(name, f)| {
            fs::metadata(dir.join(name)).is_ok_and(|m| m.is_file() && m.len() == f.size)
        });
    if verified {
        log(&format!(
            "weights: {url} already in the cache ({})",
            dir.display()
        ));
        return Ok(dir);
    }
    let _ = fs::remove_file(&marker);

    // Files already complete (a previous run) are checked; the rest are fetched.
    let mut todo = Vec::new();
    for (name, entry) in &manifest.files {
        let path = dir.join(name);
        if fs::metadata(&path).is_ok_and(|m| m.is_file() && m.len() == entry.size) {
            if sha256_file(&path)? == entry.sha256 {
                continue;
            }
            log(&format!(
                "weights: cached {name} does not match the manifest; fetching it again"
            ));
            fs::remove_file(&path).map_err(io(&path))?;
        }
        todo.push((name.clone(), entry.size, entry.sha256.clone()));
    }
    let total: u64 = todo.iter().map(|t| t.1).sum();
    log(&format!(
        "weights: fetching {} of {} files ({:.1} MiB) from {url} ({} connections, {})",
        todo.len(),
        manifest.files.len(),
        total as f64 / 1048576.0,
        options.connections,
        if ranges {
            "range requests"
        } else {
            "no range support: whole files"
        }
    ));
    let started = Instant::now();
    let fetched = download_all(&client, url, &dir, &todo, ranges, options, log)?;
    let secs = started.elapsed().as_secs_f64();
    log(&format!(
        "weights: fetched {:.1} MiB in {secs:.1} s ({:.1} MiB/s)",
        fetched as f64 / 1048576.0,
        fetched as f64 / 1048576.0 / secs.max(1e-3)
    ));
    let manifest_path = dir.join("manifest.json");
    write_atomic(&manifest_path, &manifest_bytes)?;
    write_atomic(&marker, digest.as_bytes())?;
    Ok(dir)
}

fn safe_relative(name: &str) -> bool {
    let p = Path::new(name);
    !name.is_empty()
        && name != "manifest.json"
        && !name.ends_with(".part")
        && !name.ends_with(".part.done")
        && p.components().all(|c| matches!(c, Component::Normal(_)))
}

/// GETs the manifest with `Range: bytes=0-` so the answer also says whether ranges work.
fn get_manifest(
    client: &reqwest::blocking::Client,
    url: &str,
    options: &Options,
) -> Result<(Vec<u8>, bool), WeightsSourceError> {
    with_retries(options.attempts, || {
        let resp = client
            .get(url)
            .header(reqwest::header::RANGE, "bytes=0-")
            .send()
            .map_err(|e| transient_http(url, e))?;
        let status = resp.status().as_u16();
        if status != 200 && status != 206 {
            return Err(status_error(url, status));
        }
        let bytes = resp.bytes().map_err(|e| transient_http(url, e))?;
        Ok((bytes.to_vec(), status == 206))
    })
}

/// An error and whether trying again may help.
type Attempt<T> = Result<T, (WeightsSourceError, bool)>;

fn transient_http(url: &str, e: reqwest::Error) -> (WeightsSourceError, bool) {
    (
        WeightsSourceError::Http {
            url: url.to_string(),
            message: error_chain(&e),
        },
        true,
    )
}

fn status_error(url: &str, status: u16) -> (WeightsSourceError, bool) {
    (
        WeightsSourceError::Status {
            url: url.to_string(),
            status,
        },
        status >= 500 || status == 429,
    )
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

fn with_retries<T>(
    attempts: u32,
    mut f: impl FnMut() -> Attempt<T>,
) -> Result<T, WeightsSourceError> {
    let mut tried = 0;
    loop {
        tried += 1;
        match f() {
            Ok(v) => return Ok(v),
            Err((e, transient)) => {
                if !transient || tried >= attempts.max(1) {
                    return Err(e);
                }
                std::thread::sleep(Duration::from_millis(200 << tried.min(5)));
            }
        }
    }
}

/// One file being fetched: its partial file and which pieces are finished.
struct Partial {
    name: String,
    size: u64,
    sha256: String,
    part: PathBuf,
    done_path: PathBuf,
    file: File,
    pieces: u64,
    done: Mutex<BTreeSet<u64>>,
}

struct Task {
    file: usize,
    piece: u64,
    start: u64,
    end: u64, // exclusive
}

fn download_all(
    client: &reqwest::blocking::Client,
    url: &str,
    dir: &Path,
    todo: &[(String, u64, String)],
    ranges: bool,
    options: &Options,
    log: &dyn Fn(&str),
) -> Result<u64, WeightsSourceError> {
    let chunk = if ranges {
        options.chunk_size.max(1)
    } else {
        u64::MAX
    };
    let mut partials = Vec::new();
    let mut queue = VecDeque::new();
    for (name, size, sha256) in todo {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io(parent))?;
        }
        let part = PathBuf::from(format!("{}.part", path.display()));
        let done_path = PathBuf::from(format!("{}.part.done", path.display()));
        let pieces = if *size == 0 { 0 } else { size.div_ceil(chunk) };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&part)
            .map_err(io(&part))?;
        let have = file.metadata().map_err(io(&part))?.len();
        // Pieces recorded as finished and still wholly inside the partial file are kept; a
        // truncated partial file loses the pieces past its end. Without range support there is
        // nothing to continue from.
        let mut done = BTreeSet::new();
        if ranges {
            if let Ok(text) = fs::read_to_string(&done_path) {
                for piece in text
                    .split_whitespace()
                    .filter_map(|w| w.parse::<u64>().ok())
                {
                    let end = ((piece + 1).saturating_mul(chunk)).min(*size);
                    if piece < pieces && end <= have {
                        done.insert(piece);
                    }
                }
            }
        }
        if have > *size {
            file.set_len(*size).map_err(io(&part))?;
        }
        if !done.is_empty() {
            log(&format!(
                "weights: {name}: continuing, {} of {pieces} pieces already here",
                done.len()
            ));
        }
        let idx = partials.len();
        for piece in 0..pieces {
            if !done.contains(&piece) {
                let start = piece * chunk;
                queue.push_back(Task {
                    file: idx,
                    piece,
                    start,
                    end: (start.saturating_add(chunk)).min(*size),
                });
            }
        }
        partials.push(Partial {
            name: name.clone(),
            size: *size,
            sha256: sha256.clone(),
            part,
            done_path,
            file,
            pieces,
            done: Mutex::new(done),
        });
    }

    // Files with nothing left to fetch (empty, or every piece already here) finish now.
    for p in &partials {
        if p.done.lock().unwrap().len() as u64 == p.pieces {
            finish(p, dir)?;
        }
    }

    let queue = Mutex::new(queue);
    let abort = AtomicBool::new(false);
    let first_error: Mutex<Option<WeightsSourceError>> = Mutex::new(None);
    let fetched = AtomicU64::new(0);
    let total: u64 = {
        let q = queue.lock().unwrap();
        q.iter().map(|t| t.end - t.start).sum()
    };
    let next_report = AtomicU64::new(total / 10);
    let progress = Mutex::new(());
    let workers = options
        .connections
        .max(1)
        .min(queue.lock().unwrap().len().max(1));
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::scope(|s| {
        for _ in 0..workers {
            let tx = tx.clone();
            s.spawn(|| {
                let tx = tx;
                loop {
                    if abort.load(Ordering::Relaxed) {
                        return;
                    }
                    let Some(task) = queue.lock().unwrap().pop_front() else {
                        return;
                    };
                    let p = &partials[task.file];
                    let file_url = format!("{url}/{}", url_path(&p.name));
                    let result = fetch_piece(client, &file_url, p, &task, ranges, options)
                        .and_then(|n| {
                            let now = fetched.fetch_add(n, Ordering::Relaxed) + n;
                            let mark = next_report.load(Ordering::Relaxed);
                            if total > 0 && now >= mark && now < total {
                                let _g = progress.lock().unwrap();
                                if next_report.load(Ordering::Relaxed) == mark {
                                    next_report.store(mark + total / 10, Ordering::Relaxed);
                                    let _ = tx.send(format!(
                                        "weights: {:.0}% ({:.1} of {:.1} MiB)",
                                        now as f64 * 100.0 / total as f64,
                                        now as f64 / 1048576.0,
                                        total as f64 / 1048576.0
                                    ));
                                }
                            }
                            let all_done = {
                                let mut done = p.done.lock().unwrap();
                                done.insert(task.piece);
                                if ranges {
                                    let text: Vec<String> =
                                        done.iter().map(|d| d.to_string()).collect();
                                    write_atomic(&p.done_path, text.join("\n").as_bytes())?;
                                }
                                done.len() as u64 == p.pieces
                            };
                            if all_done {
                                finish(p, dir)?;
                                let _ = tx.send(format!("weights: {} verified", p.name));
                            }
                            Ok(())
                        });
                    if let Err(e) = result {
                        abort.store(true, Ordering::Relaxed);
                        first_error.lock().unwrap().get_or_insert(e);
                        return;
                    }
                }
            });
        }
        drop(tx);
        // Log lines come back to this thread: `log` need not be Sync.
        for line in rx {
            log(&line);
        }
    });
    if let Some(e) = first_error.into_inner().unwrap() {
        return Err(e);
    }
    Ok(fetched.into_inner())
}

/// Each path segment percent-encoded.
fn url_path(name: &str) -> String {
    name.split('/')
        .map(|seg| {
            let mut out = String::new();
            for b in seg.bytes() {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    out.push(b as char);
                } else {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
            out
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Fetches one piece into its place in the partial file; returns the bytes written.
fn fetch_piece(
    client: &reqwest::blocking::Client,
    url: &str,
    p: &Partial,
    task: &Task,
    ranges: bool,
    options: &Options,
) -> Result<u64, WeightsSourceError> {
    let want = task.end - task.start;
    with_retries(options.attempts, || {
        let mut req = client.get(url);
        if ranges {
            req = req.header(
                reqwest::header::RANGE,
                format!("bytes={}-{}", task.start, task.end - 1),
            );
        }
        let mut resp = req.send().map_err(|e| transient_http(url, e))?;
        let status = resp.status().as_u16();
        match (ranges, status) {
            (true, 206) => {
                let cr = resp
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                let expect = format!("bytes {}-{}/", task.start, task.end - 1);
                if !cr.starts_with(&expect) {
                    return Err((
                        WeightsSourceError::Http {
                            url: url.to_string(),
                            message: format!(
                                "asked for bytes {}-{}, got Content-Range {cr:?}",
                                task.start,
                                task.end - 1
                            ),
                        },
                        false,
                    ));
                }
            }
            (false, 200) => {}
            (true, 200) => {
                return Err((
                    WeightsSourceError::Http {
                        url: url.to_string(),
                        message: "the server ignored the Range header for this file".into(),
                    },
                    false,
                ))
            }
            _ => return Err(status_error(url, status)),
        }
        let mut buf = vec![0u8; 256 << 10];
        let mut off = task.start;
        loop {
            let n = resp.read(&mut buf).map_err(|e| {
                (
                    WeightsSourceError::Http {
                        url: url.to_string(),
                        message: format!("reading the body: {e}"),
                    },
                    true,
                )
            })?;
            if n == 0 {
                break;
            }
            if off + n as u64 > task.end {
                return Err((
                    WeightsSourceError::Size {
                        file: p.name.clone(),
                        expected: p.size,
                        actual: off + n as u64,
                    },
                    false,
                ));
            }
            p.file
                .write_all_at(&buf[..n], off)
                .map_err(|e| (io(&p.part)(e), false))?;
            off += n as u64;
        }
        if off != task.end {
            // A body cut short: the connection dropped. Try the piece again.
            return Err((
                WeightsSourceError::Http {
                    url: url.to_string(),
                    message: format!("body ended after {} of {want} bytes", off - task.start),
                },
                true,
            ));
        }
        Ok(want)
    })
}

/// All pieces of a file are here: check it and give it its name.
fn finish(p: &Partial, dir: &Path) -> Result<(), WeightsSourceError> {
    p.file.sync_all().map_err(io(&p.part))?;
    let len = fs::metadata(&p.part).map_err(io(&p.part))?.len();
    if len != p.size {
        return Err(WeightsSourceError::Size {
            file: p.name.clone(),
            expected: p.size,
            actual: len,
        });
    }
    let actual = sha256_file(&p.part)?;
    if actual != p.sha256 {
        let _ = fs::remove_file(&p.part);
        let _ = fs::remove_file(&p.done_path);
        return Err(WeightsSourceError::Checksum {
            file: p.name.clone(),
            expected: p.sha256.clone(),
            actual,
        });
    }
    let path = dir.join(&p.name);
    fs::rename(&p.part, &path).map_err(io(&path))?;
    let _ = fs::remove_file(&p.done_path);
    Ok(())
}

fn sha256_file(path: &Path) -> Result<String, WeightsSourceError> {
    let mut f = File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WeightsSourceError> {
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io(path))
}
