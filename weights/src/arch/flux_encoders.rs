//! All of FLUX's graphs but the transformer, built together from a diffusers pipeline folder
//! (`text_encoder/`, `text_encoder_2/`, `vae/`) into one output folder.

use super::nn::BuiltGraph;
use super::{clip, t5, vae, Dtype};
use crate::quant::Scheme;
use crate::Error;
use std::path::Path;

/// Dtypes and T5 quantisation. The default is what FluxPipeline runs in bf16 deployments: every
/// component in bf16 (T5's activations overflow fp16), T5's linears unquantised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderOptions {
    pub clip_dtype: Dtype,
    pub t5_dtype: Dtype,
    /// Weight-only quantisation of T5's attention and FFN matrices (e.g. `QuantArg::Rtn8.scheme()`).
    pub t5_linear: Scheme,
    pub vae_dtype: Dtype,
}

impl Default for EncoderOptions {
    fn default() -> Self {
        EncoderOptions {
            clip_dtype: Dtype::Bf16,
            t5_dtype: Dtype::Bf16,
            t5_linear: Scheme::None,
            vae_dtype: Dtype::Bf16,
        }
    }
}

/// The four graphs, each `<name>.onnx` + `<name>.onnx.data` in the output folder.
#[derive(Debug, Clone)]
pub struct EncoderGraphs {
    pub clip: BuiltGraph,
    pub t5: BuiltGraph,
    pub vae_decoder: BuiltGraph,
    pub vae_encoder: BuiltGraph,
}

impl EncoderGraphs {
    pub fn all(&self) -> [&BuiltGraph; 4] {
        [&self.clip, &self.t5, &self.vae_decoder, &self.vae_encoder]
    }
}

/// Builds `clip.onnx`, `t5.onnx`, `vae_decoder.onnx` and `vae_encoder.onnx` into `out_dir`.
pub fn build(
    pipeline: &Path,
    out_dir: &Path,
    opts: &EncoderOptions,
) -> Result<EncoderGraphs, Error> {
    Ok(EncoderGraphs {
        clip: clip::build_dir(&pipeline.join("text_encoder"), out_dir, opts.clip_dtype)?,
        t5: t5::build_dir(
            &pipeline.join("text_encoder_2"),
            out_dir,
            opts.t5_dtype,
            opts.t5_linear,
        )?,
        vae_decoder: vae::build_decoder_dir(&pipeline.join("vae"), out_dir, opts.vae_dtype)?,
        vae_encoder: vae::build_encoder_dir(&pipeline.join("vae"), out_dir, opts.vae_dtype)?,
    })
}
