//! The cogrs predictors and the engine they share.

pub mod engine;
