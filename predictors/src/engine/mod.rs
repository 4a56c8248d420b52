//! The engine shared by the predictors: ONNX Runtime sessions, text generation, vision, diffusion.

pub mod diffusion;
pub mod llm;
pub mod ort_env;
pub mod vision;
