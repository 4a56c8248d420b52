//! The vision half of a Gemma 3 `config.json`: `vision_config` (SigLIP) and the projector fields of
//! the outer config, normalised into a [`VisionSpec`]; and where the tower's tensors live in the
//! checkpoint (the names differ between Google's release and what transformers 5 saves).

use crate::checkpoint::TensorSource;
use crate::Error;
use serde::Deserialize;
use std::path::Path;

/// The outer `Gemma3ForConditionalGeneration` config, as far as the vision graph needs it.
/// Defaults are transformers' `Gemma3Config` ones (Google's files leave some fields out).
#[derive(Debug, Clone, Deserialize)]
pub struct Gemma3Config {
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default)]
    pub model_type: Option<String>,
    pub vision_config: SiglipVisionConfig,
    pub text_config: Gemma3TextHidden,
    #[serde(default = "d_mm_tokens")]
    pub mm_tokens_per_image: usize,
    #[serde(default = "d_boi")]
    pub boi_token_index: u32,
    #[serde(default = "d_eoi")]
    pub eoi_token_index: u32,
    #[serde(default = "d_image")]
    pub image_token_index: u32,
}

/// Only the width of the text model (the projector's output) is read here; the text builder
/// parses the rest of `text_config`.
#[derive(Debug, Clone, Deserialize)]
pub struct Gemma3TextHidden {
    #[serde(default = "d_text_hidden")]
    pub hidden_size: usize,
}

/// `vision_config` (`siglip_vision_model`), with transformers' `SiglipVisionConfig` defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct SiglipVisionConfig {
    #[serde(default = "d_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_intermediate")]
    pub intermediate_size: usize,
    #[serde(default = "d_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "d_channels")]
    pub num_channels: usize,
    #[serde(default = "d_image_size")]
    pub image_size: usize,
    #[serde(default = "d_patch")]
    pub patch_size: usize,
    #[serde(default = "d_act")]
    pub hidden_act: String,
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
}

fn d_mm_tokens() -> usize {
    256
}
fn d_boi() -> u32 {
    255_999
}
fn d_eoi() -> u32 {
    256_000
}
fn d_image() -> u32 {
    262_144
}
fn d_text_hidden() -> usize {
    2304
}
fn d_hidden() -> usize {
    768
}
fn d_intermediate() -> usize {
    3072
}
fn d_layers() -> usize {
    12
}
fn d_heads() -> usize {
    12
}
fn d_channels() -> usize {
    3
}
fn d_image_size() -> usize {
    224
}
fn d_patch() -> usize {
    16
}
fn d_act() -> String {
    "gelu_pytorch_tanh".into()
}
fn d_eps() -> f64 {
    1e-6
}

/// Everything the vision graph builder needs.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionSpec {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    /// LayerNorm epsilon of the tower; the projector's RMSNorm uses it too (as transformers does).
    pub eps: f32,
    /// Image tokens per image after the projector (a square number).
    pub mm_tokens: usize,
    /// Width of the text model: the projector's output.
    pub text_hidden: usize,
    pub image_token_id: u32,
    pub boi_token_id: u32,
    pub eoi_token_id: u32,
}

impl VisionSpec {
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }
    /// Patches along one side of the image.
    pub fn patches_per_side(&self) -> usize {
        self.image_size / self.patch_size
    }
    /// Image tokens along one side of the pooled grid.
    pub fn tokens_per_side(&self) -> usize {
        (self.mm_tokens as f64).sqrt().round() as usize
    }
    /// Side of the average-pooling window (and its stride).
    pub fn pool(&self) -> usize {
        self.patches_per_side() / self.tokens_per_side()
    }
}

impl Gemma3Config {
    pub fn load(path: &Path) -> Result<Self, Error> {
        crate::checkpoint::read_json(path)
    }

    pub fn vision_spec(&self, path: &Path) -> Result<VisionSpec, Error> {
        let err = |msg: String| Error::Config {
            path: path.to_path_buf(),
            msg,
        };
        let v = &self.vision_config;
        if v.hidden_act != "gelu_pytorch_tanh" {
            return Err(err(format!(
                "vision_config.hidden_act {:?}: only gelu_pytorch_tanh is supported",
                v.hidden_act
            )));
        }
        if v.num_attention_heads == 0 || !v.hidden_size.is_multiple_of(v.num_attention_heads) {
            return Err(err(format!(
                "vision_config.hidden_size {} is not a multiple of num_attention_heads {}",
                v.hidden_size, v.num_attention_heads
            )));
        }
        if v.patch_size == 0 || !v.image_size.is_multiple_of(v.patch_size) {
            return Err(err(format!(
                "vision_config.image_size {} is not a multiple of patch_size {}",
                v.image_size, v.patch_size
            )));
        }
        let spec = VisionSpec {
            hidden: v.hidden_size,
            intermediate: v.intermediate_size,
            layers: v.num_hidden_layers,
            heads: v.num_attention_heads,
            channels: v.num_channels,
            image_size: v.image_size,
            patch_size: v.patch_size,
            eps: v.layer_norm_eps as f32,
            mm_tokens: self.mm_tokens_per_image,
            text_hidden: self.text_config.hidden_size,
            image_token_id: self.image_token_index,
            boi_token_id: self.boi_token_index,
            eoi_token_id: self.eoi_token_index,
        };
        let t = spec.tokens_per_side();
        if t == 0 || t * t != spec.mm_tokens || !spec.patches_per_side().is_multiple_of(t) {
            return Err(err(format!(
                "mm_tokens_per_image {} must be a square whose side divides the {}-patch grid side",
                spec.mm_tokens,
                spec.patches_per_side()
            )));
        }
        if spec.layers == 0 {
            return Err(err("vision_config.num_hidden_layers is 0".into()));
        }
        Ok(spec)
    }
}

/// Where the tower and the projector sit in a checkpoint. Google's release stores
/// `vision_tower.vision_model.*`; transformers 5 saves `vision_tower.*` (and keeps
/// `model.vision_tower.*` in memory); the projector is `multi_modal_projector.*`, or
/// `model.multi_modal_projector.*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VisionNames {
    /// Prefix of `embeddings.*`, `encoder.layers.*`, `post_layernorm.*`.
    pub tower: String,
    /// Prefix of `mm_input_projection_weight` and `mm_soft_emb_norm.*`.
    pub projector: String,
}

impl VisionNames {
    pub fn find(src: &dyn TensorSource) -> Result<Self, Error> {
        const TOWERS: &[&str] = &[
            "vision_tower.vision_model.",
            "vision_tower.",
            "model.vision_tower.vision_model.",
            "model.vision_tower.",
        ];
        const PROJECTORS: &[&str] = &["multi_modal_projector.", "model.multi_modal_projector."];
        let probe = "embeddings.patch_embedding.weight";
        let tower = TOWERS
            .iter()
            .find(|p| src.contains(&format!("{p}{probe}")))
            .ok_or_else(|| Error::MissingTensor {
                file: src.file_of(&format!("{}{probe}", TOWERS[0])),
                tensor: format!("{}{probe} (the SigLIP vision tower)", TOWERS[0]),
            })?;
        let probe = "mm_input_projection_weight";
        let projector = PROJECTORS
            .iter()
            .find(|p| src.contains(&format!("{p}{probe}")))
            .ok_or_else(|| Error::MissingTensor {
                file: src.file_of(&format!("{}{probe}", PROJECTORS[0])),
                tensor: format!("{}{probe} (the multimodal projector)", PROJECTORS[0]),
            })?;
        Ok(VisionNames {
            tower: tower.to_string(),
            projector: projector.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::Tensor;
    use std::path::PathBuf;

    struct Names(Vec<&'static str>);

    impl TensorSource for Names {
        fn get(&self, name: &str) -> Result<Tensor, Error> {
            Err(Error::MissingTensor {
                file: self.file_of(name),
                tensor: name.into(),
            })
        }
        fn contains(&self, name: &str) -> bool {
            self.0.contains(&name)
        }
        fn file_of(&self, _: &str) -> PathBuf {
            PathBuf::from("model.safetensors")
        }
    }

    #[test]
    fn finds_google_and_transformers_layouts() {
        let google = Names(vec![
            "vision_tower.vision_model.embeddings.patch_embedding.weight",
            "multi_modal_projector.mm_input_projection_weight",
        ]);
        assert_eq!(
            VisionNames::find(&google).unwrap(),
            VisionNames {
                tower: "vision_tower.vision_model.".into(),
                projector: "multi_modal_projector.".into()
            }
        );
        let in_memory = Names(vec![
            "model.vision_tower.embeddings.patch_embedding.weight",
            "model.multi_modal_projector.mm_input_projection_weight",
        ]);
        assert_eq!(
            VisionNames::find(&in_memory).unwrap(),
            VisionNames {
                tower: "model.vision_tower.".into(),
                projector: "model.multi_modal_projector.".into()
            }
        );
        let text_only = Names(vec!["model.embed_tokens.weight"]);
        let e = VisionNames::find(&text_only).unwrap_err().to_string();
        assert!(e.contains("vision tower"), "{e}");
    }
}
