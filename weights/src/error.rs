//! One error type for the crate. Every variant that concerns input names the file, and where it
//! concerns one tensor, the tensor: a user with a broken checkpoint must know where to look.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: required file is missing ({why})")]
    MissingFile { path: PathBuf, why: String },
    #[error("{path}: unknown architecture {name:?} (supported: {supported})")]
    UnknownArchitecture {
        path: PathBuf,
        name: String,
        supported: String,
    },
    #[error("{path}: {msg}")]
    Config { path: PathBuf, msg: String },
    #[error("{file}: tensor {tensor:?} is missing")]
    MissingTensor { file: PathBuf, tensor: String },
    #[error("{file}: tensor {tensor:?} has shape {got:?}, expected {expected:?}")]
    ShapeMismatch {
        file: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("{file}: corrupt safetensors: {msg}")]
    Safetensors { file: PathBuf, msg: String },
    #[error("{file}: bad GGUF{}: {msg}", tensor.as_ref().map(|t| format!(" (tensor {t:?})")).unwrap_or_default())]
    Gguf {
        file: PathBuf,
        tensor: Option<String>,
        msg: String,
    },
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("{dir}: verification failed: {problems:?}")]
    Verify { dir: PathBuf, problems: Vec<String> },
    #[error("output {path} already exists (pass --force to replace it)")]
    OutputExists { path: PathBuf },
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
