//! The FLUX VAE (`AutoencoderKL`, the pipeline's `vae/`): `vae_decoder.onnx` turns latents into
//! an image, `vae_encoder.onnx` an image into the latent distribution img2img samples from.
//!
//! Scaling stays outside the graphs (predictors' `latents::VaeScaling`): the decoder takes
//! latents already mapped by `z / scaling_factor + shift_factor`, and the encoder's mean is
//! mapped back by `(z − shift_factor) · scaling_factor` after sampling. Sampling itself (mean +
//! std · noise with a seeded generator) is in Rust too, so the encoder returns the distribution:
//! `latent_mean` and `latent_logvar`, the latter clamped to [−30, 20] as diffusers'
//! `DiagonalGaussianDistribution` clamps it (std = exp(0.5 · logvar)).

mod blocks;

use super::nn::{self, BuiltGraph};
use super::Dtype;
use crate::checkpoint::read_json;
use crate::checkpoint::safetensors::SafetensorsSource;
use crate::Error;
use serde::Deserialize;
use std::path::Path;

pub use blocks::{build_decoder, build_encoder};

pub const DECODER_GRAPH: &str = "vae_decoder.onnx";
pub const ENCODER_GRAPH: &str = "vae_encoder.onnx";
/// Decoder input: `[batch, latent_channels, latent_height, latent_width]`, unscaled.
pub const LATENT: &str = "latent";
/// Decoder output and encoder input: `[batch, 3, 8·latent_height, 8·latent_width]` in [−1, 1].
pub const IMAGE: &str = "image";
pub const LATENT_MEAN: &str = "latent_mean";
/// The VAE graphs use ONNX opset 22, the first whose Conv accepts bfloat16 (ONNX Runtime's CUDA
/// provider has bf16 Conv kernels from that version on); the text encoders stay at the default.
pub const OPSET: i64 = 22;
pub const LATENT_LOGVAR: &str = "latent_logvar";

/// `vae/config.json` (diffusers `AutoencoderKL`).
#[derive(Debug, Clone, Deserialize)]
pub struct VaeConfig {
    #[serde(default = "three")]
    pub in_channels: usize,
    #[serde(default = "three")]
    pub out_channels: usize,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    #[serde(default = "one")]
    pub layers_per_block: usize,
    #[serde(default = "silu")]
    pub act_fn: String,
    #[serde(default = "four")]
    pub latent_channels: usize,
    #[serde(default = "groups")]
    pub norm_num_groups: usize,
    /// Not used by the graphs: the pipeline applies it (FLUX: 0.3611).
    #[serde(default = "sd_scaling")]
    pub scaling_factor: f64,
    /// Not used by the graphs: the pipeline applies it (FLUX: 0.1159).
    #[serde(default)]
    pub shift_factor: Option<f64>,
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
    #[serde(default = "yes")]
    pub mid_block_add_attention: bool,
}

fn three() -> usize {
    3
}
fn one() -> usize {
    1
}
fn four() -> usize {
    4
}
fn groups() -> usize {
    32
}
fn silu() -> String {
    "silu".into()
}
fn sd_scaling() -> f64 {
    0.18215
}
fn yes() -> bool {
    true
}

impl VaeConfig {
    pub fn load(dir: &Path) -> Result<Self, Error> {
        let path = dir.join("config.json");
        let cfg: Self = read_json(&path)?;
        cfg.check().map_err(|msg| Error::Config { path, msg })?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), String> {
        let n = self.block_out_channels.len();
        if n == 0 || self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(format!(
                "{} block_out_channels, {} down blocks, {} up blocks",
                n,
                self.down_block_types.len(),
                self.up_block_types.len()
            ));
        }
        if let Some(t) = self
            .down_block_types
            .iter()
            .find(|t| *t != "DownEncoderBlock2D")
        {
            return Err(format!("down block {t:?} (supported: DownEncoderBlock2D)"));
        }
        if let Some(t) = self
            .up_block_types
            .iter()
            .find(|t| *t != "UpDecoderBlock2D")
        {
            return Err(format!("up block {t:?} (supported: UpDecoderBlock2D)"));
        }
        if !matches!(self.act_fn.as_str(), "silu" | "swish") {
            return Err(format!("act_fn {:?} (supported: silu)", self.act_fn));
        }
        if let Some(c) = self
            .block_out_channels
            .iter()
            .find(|&&c| self.norm_num_groups == 0 || !c.is_multiple_of(self.norm_num_groups))
        {
            return Err(format!(
                "block channels {c} are not a multiple of norm_num_groups {}",
                self.norm_num_groups
            ));
        }
        Ok(())
    }

    /// Image pixels per latent pixel along each side: 2^(levels − 1) (FLUX: 8).
    pub fn scale_factor(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}

/// Builds `vae_decoder.onnx` (+ `.data`) in `out_dir` from an `AutoencoderKL` folder.
///
/// I/O: `latent` `[batch, latent_channels, h, w]` (already `z / scaling + shift`) → `image`
/// `[batch, out_channels, 8h, 8w]`, roughly in [−1, 1] (not clamped), both in `dtype`.
pub fn build_decoder_dir(dir: &Path, out_dir: &Path, dtype: Dtype) -> Result<BuiltGraph, Error> {
    let cfg = VaeConfig::load(dir)?;
    let src = SafetensorsSource::open_component(dir)?;
    nn::write_graph_at(out_dir, DECODER_GRAPH, dtype, OPSET, |net| {
        build_decoder(&cfg, &src, net)
    })
}

/// Builds `vae_encoder.onnx` (+ `.data`) in `out_dir` from an `AutoencoderKL` folder.
///
/// I/O: `image` `[batch, in_channels, H, W]` in [−1, 1], H and W multiples of 8 → `latent_mean`
/// and `latent_logvar` `[batch, latent_channels, H/8, W/8]` (unscaled), all in `dtype`.
pub fn build_encoder_dir(dir: &Path, out_dir: &Path, dtype: Dtype) -> Result<BuiltGraph, Error> {
    let cfg = VaeConfig::load(dir)?;
    let src = SafetensorsSource::open_component(dir)?;
    nn::write_graph_at(out_dir, ENCODER_GRAPH, dtype, OPSET, |net| {
        build_encoder(&cfg, &src, net)
    })
}
