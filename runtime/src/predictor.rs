//! The typed predictor API: what a model implements to be served.
//!
//! A predictor declares its `Input` and `Output` types (serde + schemars); the runtime derives the
//! OpenAPI document and the input validator from them, so the schema users see and the checks their
//! requests meet can never drift apart. `predict` runs on a blocking thread: model code is plain
//! synchronous Rust and reaches the protocol only through [`PredictContext`].

use crate::prediction::PredictionEvents;
use schemars::JsonSchema;
use serde::{de::DeserializeOwned, Serialize};
use std::collections::HashMap;
use std::path::Path as StdPath;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// A model served by the runtime.
pub trait Predictor: Send + Sync + Sized + 'static {
    /// Raw request input, as the OpenAPI document describes it.
    type Input: DeserializeOwned + JsonSchema;
    /// Input after the predictor's own checks (e.g. a prompt that fits the context).
    type Valid: Send;
    /// What a prediction returns; file fields are [`crate::Path`] values.
    type Output: Serialize + JsonSchema;

    /// True when the predictor emits output chunks while it runs (SSE, `output` webhooks).
    const STREAMING: bool = false;

    /// Loads the model. Runs once, off the request path, before the server reports READY.
    fn setup(ctx: &SetupContext) -> Result<Self, SetupError>;

    /// Checks that need the loaded model (tokenizer, context length...). Errors name the field.
    fn validate(&self, input: Self::Input) -> Result<Self::Valid, InputError>;

    /// Runs one prediction. Long loops must poll `ctx.is_cancelled()`.
    fn predict(
        &self,
        input: Self::Valid,
        ctx: &PredictContext,
    ) -> Result<Self::Output, PredictError>;

    /// The predictor's own health check; an error makes the server report UNHEALTHY.
    fn healthcheck(&self) -> Result<(), String> {
        Ok(())
    }
}

/// What setup gets: where the weights are and how to report progress.
#[derive(Clone)]
pub struct SetupContext {
    /// `--weights` / `COG_WEIGHTS`, when given.
    pub weights: Option<String>,
    pub(crate) logs: Arc<std::sync::Mutex<String>>,
}

impl SetupContext {
    pub fn new(weights: Option<String>) -> Self {
        Self {
            weights,
            logs: Arc::default(),
        }
    }

    /// Appends a line to the setup logs shown by `/health-check`, and to the server log.
    pub fn log(&self, line: impl AsRef<str>) {
        let line = line.as_ref();
        tracing::info!(target: "cog::setup", "{line}");
        let mut logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        logs.push_str(line);
        logs.push('\n');
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Everything a running prediction may touch: cancellation, logs, metrics, streamed output and a
/// scratch directory for artifacts (removed when the prediction ends).
pub struct PredictContext {
    pub(crate) id: String,
    pub(crate) cancel: CancellationToken,
    pub(crate) events: PredictionEvents,
    /// Made on first use: most predictions of small models never write a file.
    pub(crate) scratch: std::sync::OnceLock<tempfile::TempDir>,
    pub(crate) context: HashMap<String, String>,
}

impl PredictContext {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// True once the prediction was cancelled (cancel endpoint, client gone, shutdown).
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// `Err(PredictError::Canceled)` when cancelled, for use with `?` inside loops.
    pub fn check_cancelled(&self) -> Result<(), PredictError> {
        if self.is_cancelled() {
            Err(PredictError::Canceled)
        } else {
            Ok(())
        }
    }

    /// A line for the prediction's `logs` (streamed as SSE `log` events and `logs` webhooks).
    pub fn log(&self, line: impl AsRef<str>) {
        self.events.log(line.as_ref());
    }

    /// Sets a metric reported in the response's `metrics`.
    pub fn metric(&self, name: &str, value: impl Into<serde_json::Value>) {
        self.events.metric(name, value.into());
    }

    /// Emits an output chunk (SSE `output` event, `output` webhook) while the prediction runs.
    pub fn emit(&self, chunk: impl Into<serde_json::Value>) {
        self.events.output_chunk(chunk.into());
    }

    /// A directory private to this prediction for artifacts and downloaded inputs; deleted after
    /// the response is built.
    pub fn scratch_dir(&self) -> &StdPath {
        self.scratch_tempdir()
            .map(|d| d.path())
            .unwrap_or_else(|_| StdPath::new("/nonexistent-scratch-dir"))
    }

    pub(crate) fn scratch_tempdir(&self) -> std::io::Result<&tempfile::TempDir> {
        if let Some(d) = self.scratch.get() {
            return Ok(d);
        }
        let prefix: String = self
            .id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(64)
            .collect();
        let dir = tempfile::Builder::new()
            .prefix(&format!("cog-{prefix}-"))
            .tempdir()?;
        Ok(self.scratch.get_or_init(|| dir))
    }

    /// The request's `context` object (string values), as Replicate sends it.
    pub fn request_context(&self) -> &HashMap<String, String> {
        &self.context
    }
}

/// A setup failure; its message is shown in the health check.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SetupError(pub String);

impl SetupError {
    pub fn new(msg: impl std::fmt::Display) -> Self {
        Self(msg.to_string())
    }
}

/// A bad input found by [`Predictor::validate`]: a 422 naming the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {msg}")]
pub struct InputError {
    pub field: String,
    pub msg: String,
}

impl InputError {
    pub fn new(field: impl Into<String>, msg: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            msg: msg.into(),
        }
    }
}

/// How a prediction ends other than with an output.
#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    #[error("canceled")]
    Canceled,
    #[error("{0}")]
    Input(#[from] InputError),
    #[error("{0}")]
    Failed(String),
}

impl PredictError {
    pub fn failed(msg: impl std::fmt::Display) -> Self {
        Self::Failed(msg.to_string())
    }
}
