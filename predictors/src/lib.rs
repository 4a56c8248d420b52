//! The cogrs predictors and the engine they share.

pub mod default_model;
pub mod engine;
pub mod flux;
pub mod gemma3;
pub mod phi4;
pub mod smoke_test;
pub mod smollm3;
pub mod text;
pub mod weights_check;
pub mod weights_source;

use cog_runtime::{PredictorDef, Registry};

/// Every predictor the `cogrs` binary serves, by name. Predictors register here as they land.
pub fn registry() -> Registry {
    Registry::new(vec![
        PredictorDef::of::<smollm3::SmolLM3>("smollm3"),
        PredictorDef::of::<phi4::Phi4Reasoning>("phi4-reasoning"),
        PredictorDef::of::<gemma3::Gemma3Vision>("gemma3-vision"),
        PredictorDef::of::<flux::FluxTxt2Img>("flux-txt2img"),
        PredictorDef::of::<flux::FluxImg2Img>("flux-img2img"),
    ])
}
