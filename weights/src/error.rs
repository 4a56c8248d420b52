//! One error type for the crate. Every variant that concerns input names the file, and where it
//! concerns one tensor, the tensor: a user with a broken checkpoint must know where to look.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: invalid JSON: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: required file is missing ({why})", path.display())]
    MissingFile { path: PathBuf, why: String },
    #[error("{}: unknown architecture {name:?} (supported: {supported})", path.display())]
    UnknownArchitecture {
        path: PathBuf,
        name: String,
        supported: String,
    },
    #[error("{}: {msg}", path.display())]
    Config { path: PathBuf, msg: String },
    #[error("{}: tensor {tensor:?} is missing", file.display())]
    MissingTensor { file: PathBuf, tensor: String },
    #[error("{}: tensor {tensor:?} has shape {got:?}, expected {expected:?}", file.display())]
    ShapeMismatch {
        file: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("{}: corrupt safetensors: {msg}", file.display())]
    Safetensors { file: PathBuf, msg: String },
    #[error("{}: bad GGUF{}: {msg}", file.display(), tensor.as_ref().map(|t| format!(" (tensor {t:?})")).unwrap_or_default())]
    Gguf {
        file: PathBuf,
        tensor: Option<String>,
        msg: String,
    },
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("{}: verification failed: {}", dir.display(), problems.join("; "))]
    Verify { dir: PathBuf, problems: Vec<String> },
    #[error("output {} already exists (pass --force to replace it)", path.display())]
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
