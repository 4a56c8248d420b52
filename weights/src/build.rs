//! `cogrs weights build`: checkpoint in, compiled folder out, atomically.
//!
//! Everything is written into a temporary directory beside the output and renamed into place at
//! the end, so an error (or a kill) never leaves a partial folder where the engine would look.

use crate::arch::{decoder, Arch, DecoderSpec, Dtype};
use crate::checkpoint::config::HfConfig;
use crate::checkpoint::safetensors::SafetensorsSource;
use crate::checkpoint::TensorSource;
use crate::format::{FileEntry, Manifest, FORMAT_VERSION};
use crate::onnx::{GraphBuilder, MS_DOMAIN, MS_OPSET, ONNX_OPSET};
use crate::prune::source::{PruneReport, PruneRequest, PrunedSource};
use crate::quant::{Policy, QuantArg, TensorReport};
use crate::Error;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Files copied verbatim from a Hugging Face checkpoint folder when present.
pub(crate) const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
];

#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// A Hugging Face checkpoint folder or a `.gguf` file.
    pub input: PathBuf,
    pub output: PathBuf,
    /// `None`: the architecture's default.
    pub dtype: Option<Dtype>,
    pub quant: Option<QuantArg>,
    /// Replace an existing output folder.
    pub force: bool,
    /// Prune linear weights before quantisation (`None`: no pruning).
    pub prune: Option<PruneRequest>,
    /// Recorded in the manifest.
    pub command: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct BuildSummary {
    pub manifest: Manifest,
    pub reports: Vec<TensorReport>,
}

/// Per-architecture defaults: fp16 compute everywhere; quantisation where the original
/// deployments used it (SmolLM3: HQQ 8-bit g64; Phi-4: 4-bit), none for small Llamas.
pub fn defaults(arch: Arch) -> (Dtype, QuantArg) {
    match arch {
        Arch::Llama => (Dtype::Fp16, QuantArg::None),
        Arch::SmolLM3 => (Dtype::Fp16, QuantArg::Hqq8),
        Arch::Phi3 => (Dtype::Fp16, QuantArg::Rtn4),
    }
}

/// A loaded checkpoint: its spec, tensors, and the extra files that go into the folder.
pub struct Loaded {
    pub spec: DecoderSpec,
    pub source: Box<dyn TensorSource>,
    /// (file name in the output, bytes).
    pub extra_files: Vec<(String, Vec<u8>)>,
}

pub fn load_hf_dir(dir: &Path) -> Result<Loaded, Error> {
    if !dir.is_dir() {
        return Err(Error::MissingFile {
            path: dir.to_path_buf(),
            why: "not a checkpoint folder or .gguf file".into(),
        });
    }
    let cfg_path = dir.join("config.json");
    let cfg = HfConfig::load(&cfg_path)?;
    let mut spec = cfg.spec(&cfg_path)?;
    let source = SafetensorsSource::open_dir(dir)?;
    let extra_files = extra_files(dir)?;
    for id in generation_eos(dir)? {
        if !spec.eos_token_ids.contains(&id) {
            spec.eos_token_ids.push(id);
        }
    }
    Ok(Loaded {
        spec,
        source: Box::new(source),
        extra_files,
    })
}

/// The [`TOKENIZER_FILES`] present in a checkpoint folder: (name, bytes).
pub(crate) fn extra_files(dir: &Path) -> Result<Vec<(String, Vec<u8>)>, Error> {
    let mut out = Vec::new();
    for name in TOKENIZER_FILES {
        let p = dir.join(name);
        if p.is_file() {
            out.push((
                name.to_string(),
                std::fs::read(&p).map_err(|e| Error::io(&p, e))?,
            ));
        }
    }
    Ok(out)
}

/// generation_config.json's eos list, which is what generate() stops on (merged into the spec's).
pub(crate) fn generation_eos(dir: &Path) -> Result<Vec<u32>, Error> {
    let gen = dir.join("generation_config.json");
    if !gen.is_file() {
        return Ok(Vec::new());
    }
    let v: serde_json::Value = crate::checkpoint::read_json(&gen)?;
    Ok(crate::checkpoint::config::token_ids(
        &v.get("eos_token_id").cloned(),
    ))
}

pub fn build(req: &BuildRequest) -> Result<BuildSummary, Error> {
    if crate::arch::flux_pipeline::is_flux_pipeline(&req.input) {
        return crate::arch::flux_pipeline::build_folder(req, &[]);
    }
    let is_gguf = req.input.extension().is_some_and(|e| e == "gguf");
    let cfg_path = req.input.join("config.json");
    if !is_gguf && cfg_path.is_file() {
        let cfg: serde_json::Value = crate::checkpoint::read_json(&cfg_path)?;
        if crate::arch::gemma3::is_gemma3(&cfg) {
            return crate::arch::gemma3::build_folder(req);
        }
    }
    if is_gguf && req.input.is_file() && crate::gguf::gemma3::is_gemma3_file(&req.input)? {
        return crate::arch::gemma3::build_gguf(req);
    }
    let loaded = if is_gguf {
        crate::gguf::load(&req.input)?
    } else {
        load_hf_dir(&req.input)?
    };
    build_loaded(req, loaded)
}

pub fn build_loaded(req: &BuildRequest, loaded: Loaded) -> Result<BuildSummary, Error> {
    let staging = Staging::new(&req.output, req.force)?;
    let tmp = staging.path();

    let spec = &loaded.spec;
    let (d_dtype, d_quant) = defaults(spec.arch);
    let dtype = req.dtype.unwrap_or(d_dtype);
    let quant = req.quant.unwrap_or(d_quant);
    let policy = Policy::uniform(quant.scheme());
    let prune = match &req.prune {
        None => None,
        Some(p) if p.compact => {
            return Err(Error::Unsupported(format!(
                "--compact: MLP compaction is implemented for Gemma 3 only, not {}",
                spec.arch.name()
            )))
        }
        Some(p) => Some((p, p.resolve(None)?)),
    };

    let mut g = GraphBuilder::new(
        "main_graph",
        &tmp.join("model.onnx.data"),
        "model.onnx.data",
    )?;
    let opts = decoder::Options { dtype, policy };
    let (engine, reports, prune_report) = match &prune {
        None => {
            let (e, r) = decoder::build(spec, loaded.source.as_ref(), &mut g, &opts)?;
            (e, r, None)
        }
        Some((p, (map, map_source))) => {
            let src = PrunedSource::new(loaded.source.as_ref(), map, p);
            let (e, r) = decoder::build(spec, &src, &mut g, &opts)?;
            let report = PruneReport::<()>::new(p, map, map_source, src.into_reports(), vec![]);
            (e, r, Some(report))
        }
    };
    let data_entry = g.finish(
        &tmp.join("model.onnx"),
        &[("", ONNX_OPSET), (MS_DOMAIN, MS_OPSET)],
    )?;
    drop(loaded.source);

    write_json(&tmp.join("engine.json"), &engine)?;
    let files = Files {
        reports: &reports,
        prune: prune_report.as_ref(),
        extra: &loaded.extra_files,
    };
    let pruning = files.write(tmp)?;
    let mut known = BTreeMap::new();
    known.insert("model.onnx.data".to_string(), data_entry);
    let manifest = manifest(req, spec.arch.name(), dtype, policy, pruning, tmp, known)?;
    staging.commit()?;
    Ok(BuildSummary { manifest, reports })
}

/// The side files every build writes: quantisation and pruning reports, tokenizer files.
pub(crate) struct Files<'a, C: serde::Serialize> {
    pub reports: &'a [TensorReport],
    pub prune: Option<&'a PruneReport<C>>,
    pub extra: &'a [(String, Vec<u8>)],
}

pub(crate) const PRUNE_REPORT: &str = "prune_report.json";

impl<C: serde::Serialize> Files<'_, C> {
    /// Writes them into `dir`; returns the manifest's pruning record.
    pub fn write(&self, dir: &Path) -> Result<Option<crate::format::PruningRecord>, Error> {
        if !self.reports.is_empty() {
            write_json(&dir.join("quantization_report.json"), &self.reports)?;
        }
        for (name, bytes) in self.extra {
            let p = dir.join(name);
            std::fs::write(&p, bytes).map_err(|e| Error::io(&p, e))?;
        }
        match self.prune {
            None => Ok(None),
            Some(r) => {
                write_json(&dir.join(PRUNE_REPORT), r)?;
                Ok(Some(r.record(Path::new(PRUNE_REPORT))))
            }
        }
    }
}

/// Writes `manifest.json` for the folder in `dir` (`known`: entries already hashed) and returns it.
pub(crate) fn manifest(
    req: &BuildRequest,
    architecture: &str,
    dtype: Dtype,
    policy: Policy,
    pruning: Option<crate::format::PruningRecord>,
    dir: &Path,
    known: BTreeMap<String, FileEntry>,
) -> Result<Manifest, Error> {
    let mut quantization = BTreeMap::new();
    quantization.insert("linear".to_string(), policy.linear.label());
    quantization.insert("lm_head".to_string(), policy.lm_head.label());
    quantization.insert("embeddings".to_string(), "none".to_string());
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        architecture: architecture.into(),
        dtype: dtype.name().into(),
        quantization,
        // The data files (the bulk) were hashed while they were written.
        files: hash_dir_with(dir, known)?,
        tool_version: env!("CARGO_PKG_VERSION").into(),
        command: req.command.clone(),
        pruning,
    };
    write_json(&dir.join("manifest.json"), &manifest)?;
    Ok(manifest)
}

/// A temporary folder beside the output, renamed into place by [`Staging::commit`]; dropped (and
/// removed) on any early return.
pub(crate) struct Staging {
    tmp: tempfile::TempDir,
    parent: PathBuf,
    base: String,
    out: PathBuf,
}

impl Staging {
    pub fn new(out: &Path, force: bool) -> Result<Staging, Error> {
        if out.exists() && !force {
            return Err(Error::OutputExists {
                path: out.to_path_buf(),
            });
        }
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
        let base = out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "out".into());
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{base}.partial-"))
            .tempdir_in(&parent)
            .map_err(|e| Error::io(&parent, e))?;
        Ok(Staging {
            tmp,
            parent,
            base,
            out: out.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// Swaps into place: the old folder (with --force) is moved aside first, removed last.
    pub fn commit(self) -> Result<(), Error> {
        let Staging {
            tmp,
            parent,
            base,
            out,
        } = self;
        let tmp_path = tmp.keep();
        let old = parent.join(format!(".{base}.old-{}", std::process::id()));
        let had_old = out.exists();
        if had_old {
            std::fs::rename(&out, &old).map_err(|e| Error::io(&out, e))?;
        }
        if let Err(e) = std::fs::rename(&tmp_path, &out) {
            let _ = std::fs::remove_dir_all(&tmp_path);
            if had_old {
                let _ = std::fs::rename(&old, &out);
            }
            return Err(Error::io(&out, e));
        }
        if had_old {
            std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        }
        Ok(())
    }
}

pub(crate) fn write_json<T: serde::Serialize>(path: &Path, v: &T) -> Result<(), Error> {
    let mut s = serde_json::to_string_pretty(v).map_err(|e| Error::Internal(e.to_string()))?;
    s.push('\n');
    std::fs::write(path, s).map_err(|e| Error::io(path, e))
}

/// sha256 and size of every regular file in `dir` (not recursive: the folder is flat), except
/// `manifest.json`.
pub fn hash_dir(dir: &Path) -> Result<BTreeMap<String, FileEntry>, Error> {
    hash_dir_with(dir, BTreeMap::new())
}

/// [`hash_dir`] taking already-known entries as given.
pub(crate) fn hash_dir_with(
    dir: &Path,
    known: BTreeMap<String, FileEntry>,
) -> Result<BTreeMap<String, FileEntry>, Error> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "manifest.json" || !entry.path().is_file() {
            continue;
        }
        let e = match known.get(&name) {
            Some(e) => e.clone(),
            None => hash_file(&entry.path())?,
        };
        files.insert(name, e);
    }
    Ok(files)
}

pub fn hash_file(path: &Path) -> Result<FileEntry, Error> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok(FileEntry {
        sha256: hex::encode(h.finalize()),
        size,
    })
}
