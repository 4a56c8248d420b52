//! `cog-runtime`: the Cog HTTP predictor protocol in Rust.
//!
//! A predictor implements [`Predictor`] with typed `Input`/`Output`; [`PredictorDef::of`] derives
//! its OpenAPI document and validator; [`PredictionService`] owns predictions (slots, state,
//! webhooks, files); [`http::routes`] puts Cog's HTTP API over it; [`cli`] is the command line.
//! The runtime knows no model.

pub mod cli;
pub mod config;
pub mod files;
pub mod http;
pub mod prediction;
pub mod predictor;
pub mod registry;
pub mod schema;
pub mod server;
pub mod service;
pub mod types;
pub mod validate;
pub mod webhook;

pub use predictor::{
    InputError, PredictContext, PredictError, Predictor, SetupContext, SetupError,
};
pub use registry::{PredictorDef, Registry};
pub use service::{PredictionService, ServiceConfig};
pub use types::{ConcatenateIterator, Path, Secret};

/// Re-exported so predictors derive `JsonSchema` against the same version.
pub use schemars;
