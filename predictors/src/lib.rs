//! The cogrs predictors and the engine they share.

pub mod engine;

use cog_runtime::Registry;

/// Every predictor the `cogrs` binary serves, by name. Predictors register here as they land.
pub fn registry() -> Registry {
    Registry::new(vec![])
}
