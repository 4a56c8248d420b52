//! `cog-weights`: turns released checkpoints into the compiled folders the engine runs.
//!
//! The compiled folder (see [`format`]) is the one contract between this crate and the engine in
//! `cog-predictors`. Pipeline: a checkpoint reader ([`checkpoint`], [`gguf`]) yields named f32
//! tensors and a normalised [`arch::DecoderSpec`]; the decoder builder ([`arch`]) emits the ONNX
//! graph through [`onnx`], quantising linear weights per [`quant`] policy; [`build`] writes the
//! folder atomically and [`verify`] checks one against its manifest.

pub mod arch;
pub mod build;
pub mod checkpoint;
pub mod cli;
mod error;
pub mod format;
pub mod gguf;
pub mod onnx;
pub mod prune;
pub mod quant;
pub mod smoke;
pub mod verify;

pub use error::Error;
