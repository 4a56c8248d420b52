//! ONNX Runtime for the whole process: finding the shared library (`ort` is built with
//! `load-dynamic`, so nothing is linked or downloaded at build time), choosing the execution provider
//! once, and building sessions with full graph optimisation and an optimised-model cache next to the
//! weights so that a second start skips the optimisers.

use ort::environment::Environment;
use ort::ep;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::Session;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Instant, UNIX_EPOCH};

/// The library file name ONNX Runtime ships under on Linux.
const LIB_NAME: &str = "libonnxruntime.so";

#[derive(Debug, thiserror::Error)]
pub enum OrtEnvError {
    #[error(
        "ONNX Runtime shared library not found (looked at: {searched}). Install it with \
         `scripts/install-ort` (CPU, from the PyPI wheel onnxruntime==1.31.1, into .cache/onnxruntime/), \
         or point ORT_DYLIB_PATH at a libonnxruntime.so (for CUDA: the one from onnxruntime-gpu==1.31.1, \
         with libonnxruntime_providers_cuda.so beside it)"
    )]
    LibraryNotFound { searched: String },
    #[error("ORT_DYLIB_PATH={0} does not exist")]
    DylibPathMissing(PathBuf),
    #[error("loading ONNX Runtime from {path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error("COG_EP={0:?} is not an execution provider; use `cpu` or `cuda`")]
    BadEp(String),
    #[error("execution provider {ep}: {message}")]
    Provider { ep: &'static str, message: String },
    /// The first attempt to load the runtime failed; later calls repeat its message.
    #[error("{0}")]
    Init(String),
    #[error("building the session for {path}: {message}")]
    Session { path: PathBuf, message: String },
}

/// Which execution provider sessions run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ep {
    Cpu,
    Cuda,
}

impl Ep {
    pub fn name(self) -> &'static str {
        match self {
            Ep::Cpu => "cpu",
            Ep::Cuda => "cuda",
        }
    }

    pub fn parse(s: &str) -> Result<Ep, OrtEnvError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(Ep::Cpu),
            "cuda" | "gpu" => Ok(Ep::Cuda),
            _ => Err(OrtEnvError::BadEp(s.to_string())),
        }
    }
}

/// The process-wide ONNX Runtime: the environment, the library it came from and the provider chosen.
pub struct OrtRuntime {
    env: Environment,
    pub library: PathBuf,
    /// Version of the loaded library, from its file name (`unknown` if it has none).
    pub version: String,
    /// ONNX Runtime's build info string (branch and commit); with `version`, part of the cache key.
    pub build_info: String,
    pub ep: Ep,
}

static RUNTIME: OnceLock<Result<OrtRuntime, String>> = OnceLock::new();

/// Finds the library: `ORT_DYLIB_PATH`, then beside the current executable (and its parent, which is
/// where cargo puts test binaries' `deps/`), then the project's `.cache/onnxruntime/`.
pub fn find_library() -> Result<PathBuf, OrtEnvError> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        let p = PathBuf::from(p);
        return if p.exists() {
            Ok(p)
        } else {
            Err(OrtEnvError::DylibPathMissing(p))
        };
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            candidates.push(dir.join(LIB_NAME));
        }
    }
    candidates.push(project_root().join(".cache/onnxruntime").join(LIB_NAME));
    for c in &candidates {
        if c.exists() {
            return Ok(c.clone());
        }
    }
    let searched = candidates
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    Err(OrtEnvError::LibraryNotFound { searched })
}

/// The repository root (the workspace this crate was built in); the `.cache/` of setup lives there.
/// `COGRS_ROOT` overrides it for an installed binary.
pub fn project_root() -> PathBuf {
    if let Some(p) = std::env::var_os("COGRS_ROOT") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

/// Loads ONNX Runtime once per process and chooses the execution provider (`COG_EP` overrides the
/// automatic choice: CUDA when the loaded library has the CUDA provider, else CPU).
pub fn runtime() -> Result<&'static OrtRuntime, OrtEnvError> {
    configure(None)
}

/// Like [`runtime`], with the provider chosen by the caller (e.g. a `--ep` flag) instead of `COG_EP`/auto.
/// Only the first call in a process decides; later calls return the runtime already loaded.
pub fn configure(ep: Option<Ep>) -> Result<&'static OrtRuntime, OrtEnvError> {
    let r = RUNTIME.get_or_init(|| init(ep).map_err(|e| e.to_string()));
    r.as_ref().map_err(|m| OrtEnvError::Init(m.clone()))
}

fn init(forced: Option<Ep>) -> Result<OrtRuntime, OrtEnvError> {
    let library = find_library()?;
    let load_err = |e: &dyn std::fmt::Display| OrtEnvError::Load {
        path: library.clone(),
        message: e.to_string(),
    };
    let env = ort::init_from(&library)
        .map_err(|e| load_err(&e))?
        .with_name("cogrs")
        .build()
        .map_err(|e| load_err(&e))?;
    // The C API's version string is not public in `ort`; the wheel's file name carries it
    // (libonnxruntime.so -> libonnxruntime.so.1.31.1). The build info (commit id) backs it up in the cache key.
    let version = std::fs::canonicalize(&library)
        .ok()
        .and_then(|p| {
            p.file_name()?
                .to_str()?
                .split_once(".so.")
                .map(|(_, v)| v.to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let build_info = ort::info().to_string();
    let requested = std::env::var("COG_EP")
        .ok()
        .filter(|s| !s.trim().is_empty());
    let (ep, chosen_by) = match (forced, requested) {
        (Some(ep), _) => (ep, "caller"),
        (None, Some(s)) => (Ep::parse(&s)?, "COG_EP"),
        // "Available" means the loaded library was built with the CUDA provider (the GPU wheel). Whether a
        // device is present is found out when the first session registers it, with error_on_failure, so a
        // broken CUDA install is an error rather than a silent fall back to the CPU.
        (None, None) => (if cuda_in_library() { Ep::Cuda } else { Ep::Cpu }, "auto"),
    };
    if ep == Ep::Cuda && !cuda_in_library() {
        return Err(OrtEnvError::Provider {
            ep: "cuda",
            message: format!(
                "{} has no CUDA provider: use the library of onnxruntime-gpu==1.31.1 (with \
                 libonnxruntime_providers_cuda.so beside it) through ORT_DYLIB_PATH, or COG_EP=cpu",
                library.display()
            ),
        });
    }
    tracing::info!(library = %library.display(), version = %version, ep = ep.name(), chosen_by, "onnx runtime loaded");
    Ok(OrtRuntime {
        env,
        library,
        version,
        build_info,
        ep,
    })
}

fn cuda_in_library() -> bool {
    use ort::ep::ExecutionProvider;
    ep::CUDA::is_available().unwrap_or(false)
}

/// Where a session's graph came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadedFrom {
    /// The original graph, optimised now; the optimised copy was written to the cache path (if writable).
    Original { cache_written: Option<PathBuf> },
    /// The optimised copy from an earlier start.
    Cache(PathBuf),
}

/// Options for [`OrtRuntime::session`].
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// Skip reading and writing the optimised-model cache.
    pub no_cache: bool,
    /// Intra-op threads for the CPU provider (0: ONNX Runtime's default, all cores).
    pub intra_threads: usize,
    /// CUDA provider only: capture decode steps as a CUDA graph (needs a shared KV buffer graph).
    pub cuda_graph: bool,
    /// With `cuda_graph`: sequence capacity (prompt + generated tokens) of the captured graph's KV buffer,
    /// which is allocated once at load; `None`: the model's context length.
    pub graph_kv_capacity: Option<usize>,
    /// Run this session on the CPU provider whatever the runtime's provider is (small graphs whose
    /// inputs and outputs live on the host anyway, e.g. an embedding lookup).
    pub cpu_only: bool,
    /// Write ONNX Runtime's per-node profile (Chrome trace JSON) with this path prefix.
    pub profile: Option<PathBuf>,
}

impl OrtRuntime {
    pub fn environment(&self) -> &Environment {
        &self.env
    }

    /// Builds a session for `graph`. With the cache on, the optimised graph is saved as
    /// `<graph>.<ep>-<key>.opt.onnx` beside it, `key` hashing the graph's size and mtime (and its external
    /// data file's), the ONNX Runtime version and the provider, so a changed model or runtime misses.
    pub fn session(
        &self,
        graph: &Path,
        opts: &SessionOptions,
    ) -> Result<(Session, LoadedFrom), OrtEnvError> {
        let t0 = Instant::now();
        let serr = |e: &dyn std::fmt::Display| OrtEnvError::Session {
            path: graph.to_path_buf(),
            message: e.to_string(),
        };
        let cache = if opts.no_cache {
            None
        } else {
            Some(self.cache_path(graph, opts).map_err(|e| serr(&e))?)
        };
        if let Some(cache) = cache.as_ref().filter(|c| c.exists()) {
            // Already optimised for this provider: running the optimisers again would only cost time.
            let mut b = self.builder(GraphOptimizationLevel::Disable, opts)?;
            match b.commit_from_file(cache) {
                Ok(s) => {
                    tracing::info!(graph = %graph.display(), cache = %cache.display(), ms = t0.elapsed().as_millis() as u64, "session from optimised cache");
                    return Ok((s, LoadedFrom::Cache(cache.clone())));
                }
                Err(e) => {
                    tracing::warn!(cache = %cache.display(), error = %e, "optimised cache unusable; rebuilding")
                }
            }
        }
        let mut b = self.builder(GraphOptimizationLevel::All, opts)?;
        let mut tmp = None;
        if let Some(cache) = &cache {
            if dir_writable(cache.parent().unwrap_or(Path::new("."))) {
                // Written under a temporary name and renamed after the commit succeeds, so an interrupted start
                // never leaves a truncated cache behind. External initialisers go to a side file (models over
                // 2 GB cannot be one protobuf); its name is final because the graph refers to it by name.
                let t = cache.with_extension(format!("tmp{}", std::process::id()));
                let data_name = format!(
                    "{}.data",
                    cache.file_name().unwrap_or_default().to_string_lossy()
                );
                b = b.with_optimized_model_path(&t).map_err(|e| serr(&e))?;
                b = b
                    .with_config_entry(
                        "session.optimized_model_external_initializers_file_name",
                        &data_name,
                    )
                    .map_err(|e| serr(&e))?;
                b = b
                    .with_config_entry(
                        "session.optimized_model_external_initializers_min_size_in_bytes",
                        "4096",
                    )
                    .map_err(|e| serr(&e))?;
                tmp = Some(t);
            } else {
                tracing::warn!(dir = %graph.display(), "weights folder not writable: no optimised-model cache");
            }
        }
        let session = b.commit_from_file(graph).map_err(|e| serr(&e))?;
        let mut written = None;
        if let (Some(t), Some(cache)) = (tmp, cache) {
            match std::fs::rename(&t, &cache) {
                Ok(()) => written = Some(cache),
                Err(e) => tracing::warn!(error = %e, "could not store the optimised model"),
            }
        }
        tracing::info!(graph = %graph.display(), ep = self.ep_for(opts).name(), ms = t0.elapsed().as_millis() as u64, "session built");
        Ok((
            session,
            LoadedFrom::Original {
                cache_written: written,
            },
        ))
    }

    fn builder(
        &self,
        level: GraphOptimizationLevel,
        opts: &SessionOptions,
    ) -> Result<SessionBuilder, OrtEnvError> {
        let perr = |e: &dyn std::fmt::Display| OrtEnvError::Provider {
            ep: self.ep.name(),
            message: e.to_string(),
        };
        let mut b = Session::builder(&self.env)
            .map_err(|e| perr(&e))?
            .with_optimization_level(level)
            .map_err(|e| perr(&e))?;
        if let Some(prefix) = &opts.profile {
            b = b.with_profiling(prefix).map_err(|e| perr(&e))?;
        }
        if opts.intra_threads > 0 {
            b = b
                .with_intra_threads(opts.intra_threads)
                .map_err(|e| perr(&e))?;
        }
        if self.ep_for(opts) == Ep::Cuda {
            b = b
                .with_execution_providers([cuda_provider(opts).build().error_on_failure()])
                .map_err(|e| perr(&e))?;
        }
        Ok(b)
    }

    /// The provider a session with these options runs on.
    pub fn ep_for(&self, opts: &SessionOptions) -> Ep {
        if opts.cpu_only {
            Ep::Cpu
        } else {
            self.ep
        }
    }

    fn cache_path(&self, graph: &Path, opts: &SessionOptions) -> std::io::Result<PathBuf> {
        let mut h = Sha256::new();
        for f in [
            graph.to_path_buf(),
            PathBuf::from(format!("{}.data", graph.display())),
        ] {
            if let Ok(m) = std::fs::metadata(&f) {
                let mtime = m
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                h.update(format!("{}:{}:{};", f.display(), m.len(), mtime));
            } else if f == graph {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{} not found", graph.display()),
                ));
            }
        }
        h.update(self.version.as_bytes());
        h.update(self.build_info.as_bytes());
        let ep = self.ep_for(opts);
        h.update(ep.name().as_bytes());
        let key = hex::encode(&h.finalize()[..8]);
        let name = graph.file_name().unwrap_or_default().to_string_lossy();
        // A subfolder: the compiled folder's manifest lists only its top-level files, so the cache
        // never makes `cogrs weights verify` (run at every setup) see unlisted files.
        let dir = graph.parent().unwrap_or(Path::new(".")).join(".ort-cache");
        let _ = std::fs::create_dir_all(&dir);
        Ok(dir.join(format!("{name}.{}-{key}.opt.onnx", ep.name())))
    }
}

fn dir_writable(dir: &Path) -> bool {
    let probe = dir.join(format!(".cogrs-write-probe-{}", std::process::id()));
    let ok = std::fs::write(&probe, b"").is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

/// The CUDA provider's options. The arena grows by what is asked, not by doubling (ONNX Runtime's
/// default): with doubling, a 2 GB model's weights can leave a 4 GB arena. `COG_CUDA_ATTENTION`
/// (comma-separated: flash, efficient, cudnn_flash, lean, math) restricts the attention kernels
/// ONNX Runtime may pick, for tuning on a given GPU; unknown names are ignored with a warning.
fn cuda_provider(opts: &SessionOptions) -> ep::CUDA {
    use ep::cuda::AttentionBackend as A;
    let mut p = ep::CUDA::default()
        .with_cuda_graph(opts.cuda_graph)
        .with_arena_extend_strategy(ep::ArenaExtendStrategy::SameAsRequested);
    if let Ok(list) = std::env::var("COG_CUDA_ATTENTION") {
        let mut flags = A::none();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            flags = flags
                | match name {
                    "flash" => A::FLASH_ATTENTION,
                    "efficient" => A::EFFICIENT_ATTENTION,
                    "cudnn_flash" => A::CUDNN_FLASH_ATTENTION,
                    "lean" => A::LEAN_ATTENTION,
                    "math" => A::MATH,
                    other => {
                        tracing::warn!("COG_CUDA_ATTENTION: unknown kernel {other:?} ignored");
                        A::none()
                    }
                };
        }
        p = p.with_attention_backend(flags);
    }
    p
}

/// Host memory: where the engine binds outputs it reads on the CPU (logits, feature rows, images).
pub fn host_memory() -> ort::Result<ort::memory::MemoryInfo<'static>> {
    use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
    MemoryInfo::new(
        AllocationDevice::CPU,
        0,
        AllocatorType::Device,
        MemoryType::Default,
    )
}
