//! The transformer's `config.json` as diffusers writes it, the LoRA slot spec the graph is built
//! with, and `transformer.json`: what the engine needs to run the graph (tensor names, dtypes,
//! LoRA slot inputs).

use super::slots::Slots;
use crate::Error;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// `transformer/config.json` of a diffusers `FluxTransformer2DModel`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FluxConfig {
    #[serde(rename = "_class_name", default)]
    pub class_name: Option<String>,
    #[serde(default = "one")]
    pub patch_size: usize,
    #[serde(default = "d_in_channels")]
    pub in_channels: usize,
    #[serde(default)]
    pub out_channels: Option<usize>,
    #[serde(default = "d_layers")]
    pub num_layers: usize,
    #[serde(default = "d_single_layers")]
    pub num_single_layers: usize,
    #[serde(default = "d_head_dim")]
    pub attention_head_dim: usize,
    #[serde(default = "d_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "d_joint")]
    pub joint_attention_dim: usize,
    #[serde(default = "d_pooled")]
    pub pooled_projection_dim: usize,
    #[serde(default)]
    pub guidance_embeds: bool,
    #[serde(default = "d_axes")]
    pub axes_dims_rope: Vec<usize>,
}

// diffusers' defaults (FLUX.1 sizes) for keys a config may leave out.
fn one() -> usize {
    1
}
fn d_in_channels() -> usize {
    64
}
fn d_layers() -> usize {
    19
}
fn d_single_layers() -> usize {
    38
}
fn d_head_dim() -> usize {
    128
}
fn d_heads() -> usize {
    24
}
fn d_joint() -> usize {
    4096
}
fn d_pooled() -> usize {
    768
}
fn d_axes() -> Vec<usize> {
    vec![16, 56, 56]
}

/// FluxPosEmbed's theta (fixed in diffusers, not in the config).
pub const ROPE_THETA: f64 = 10000.0;
/// Sinusoidal width of the timestep and guidance projections (`Timesteps(num_channels=256)`).
pub const TIME_PROJ_DIM: usize = 256;
/// Epsilon of every LayerNorm and RMSNorm in the model.
pub const NORM_EPS: f32 = 1e-6;

impl FluxConfig {
    pub fn load(path: &Path) -> Result<Self, Error> {
        let cfg: FluxConfig = crate::checkpoint::read_json(path)?;
        cfg.check(path)?;
        Ok(cfg)
    }

    fn check(&self, path: &Path) -> Result<(), Error> {
        let bad = |msg: String| {
            Err(Error::Config {
                path: path.to_path_buf(),
                msg,
            })
        };
        if let Some(c) = &self.class_name {
            if c != "FluxTransformer2DModel" {
                return Err(Error::UnknownArchitecture {
                    path: path.to_path_buf(),
                    name: c.clone(),
                    supported: "FluxTransformer2DModel".into(),
                });
            }
        }
        if self.patch_size != 1 {
            return bad(format!(
                "patch_size {} (only 1 is supported)",
                self.patch_size
            ));
        }
        if self.axes_dims_rope.iter().sum::<usize>() != self.attention_head_dim
            || self.axes_dims_rope.iter().any(|d| d % 2 != 0)
        {
            return bad(format!(
                "axes_dims_rope {:?} must be even and sum to attention_head_dim {}",
                self.axes_dims_rope, self.attention_head_dim
            ));
        }
        if self.num_layers + self.num_single_layers == 0 {
            return bad("a transformer with no blocks".into());
        }
        Ok(())
    }

    pub fn hidden(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    pub fn out_channels(&self) -> usize {
        self.out_channels.unwrap_or(self.in_channels)
    }
}

/// Which linear layers get a LoRA branch, and the slot rank the build records as the default (the
/// graph's rank dimension is symbolic, so a packing of another total rank binds as well).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoraSlotSpec {
    pub rank: usize,
    /// diffusers module names inside the transformer, e.g. `transformer_blocks.0.attn.to_q`.
    pub modules: BTreeSet<String>,
}

impl LoraSlotSpec {
    /// The spec that holds `slots` (the LoRAs to be hot-swapped, packed together).
    pub fn from_slots(slots: &Slots) -> Self {
        LoraSlotSpec {
            rank: slots.rank,
            modules: slots.modules.keys().cloned().collect(),
        }
    }

    /// The spec for these LoRA files (either key layout), packed in the given order: the union
    /// of their target modules, rank the sum of their largest ranks.
    pub fn from_lora_files(files: &[&Path]) -> Result<Self, Error> {
        let loras = files
            .iter()
            .map(|p| {
                super::lora::load(p).map_err(|e| Error::Config {
                    path: p.to_path_buf(),
                    msg: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let refs: Vec<&super::lora::Lora> = loras.iter().collect();
        let slots = Slots::pack(&refs).map_err(|e| Error::Config {
            path: files
                .first()
                .map_or_else(Default::default, |p| p.to_path_buf()),
            msg: e.to_string(),
        })?;
        Ok(Self::from_slots(&slots))
    }
}

/// `transformer.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TransformerEngine {
    pub format_version: u32,
    /// Graph file, relative to the folder (`transformer.onnx`).
    pub graph: String,
    /// Element type of the activations, the LoRA slot tensors and the output: `float32`,
    /// `float16` or `bfloat16`. `timestep`, `guidance` and the ids are always `float32`.
    pub dtype: String,
    pub config: FluxConfig,
    pub io: TransformerIo,
    /// Absent when the graph was built without LoRA slots.
    pub lora: Option<LoraSlotsIo>,
    /// How attention and RoPE were emitted (`plain`, `multi_head`, `multi_head_fp16`, `onnx23`;
    /// `exact`, `fused`), for reports.
    #[serde(default)]
    pub attention: String,
    #[serde(default)]
    pub rope: String,
    /// Scheme per weight group: `blocks` (attention and MLP linears of every block),
    /// `modulation` (the blocks' adaLN linears); everything else is unquantised.
    pub quantization: BTreeMap<String, String>,
}

/// Tensor names. Dims: `batch`, `n_img` (packed image tokens), `n_txt` (text tokens).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TransformerIo {
    /// [batch, n_img, in_channels], packed latents.
    pub hidden_states: String,
    /// [batch, n_txt, joint_attention_dim], T5 output.
    pub encoder_hidden_states: String,
    /// [batch, pooled_projection_dim], CLIP pooled output.
    pub pooled_projections: String,
    /// [batch] float32: sigma (the pipeline's t / 1000); the graph multiplies by 1000.
    pub timestep: String,
    /// [batch] float32: the guidance scale (the graph multiplies by 1000 as diffusers does);
    /// present when the config has `guidance_embeds`.
    pub guidance: Option<String>,
    /// [n_img, 3] and [n_txt, 3] float32 position ids.
    pub img_ids: String,
    pub txt_ids: String,
    /// [batch, n_img, out_channels]: the predicted velocity.
    pub sample: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LoraSlotsIo {
    /// The slot rank the build was sized for; the graph's `lora_rank` dimension is symbolic.
    pub rank: usize,
    /// [lora_rank]: the per-column scale s in y += ((x·Aᵀ) ⊙ s)·Bᵀ; zeros switch a LoRA off.
    pub scales: String,
    pub modules: Vec<LoraModuleIo>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LoraModuleIo {
    pub module: String,
    /// Aᵀ, [in_features, lora_rank].
    pub a_t: String,
    /// Bᵀ, [lora_rank, out_features] (alpha/rank folded in, as slots.rs packs it).
    pub b_t: String,
    pub in_features: usize,
    pub out_features: usize,
}

pub const LORA_SCALES: &str = "lora_scales";

/// Input names of one module's slot tensors.
pub fn lora_input_names(module: &str) -> (String, String) {
    (format!("lora.{module}.a_t"), format!("lora.{module}.b_t"))
}
