//! `cog-weights`: turns released checkpoints into the compiled folders the engine runs.
//!
//! The compiled folder (see [`format`]) is the one contract between this crate and the engine in
//! `cog-predictors`.

pub mod format;
