//! Gemma 3 `config.json`, text-only (`model_type` `gemma3_text`, Gemma3ForCausalLM) or multimodal
//! (`gemma3`, Gemma3ForConditionalGeneration, the text model under `text_config`), normalised into a
//! [`Gemma3Spec`].
//!
//! Real multimodal configs spell out only what differs from transformers' `Gemma3TextConfig`
//! defaults (google/gemma-3-4b-it's `text_config` has six keys), so every default here is that
//! class's. Both RoPE layouts are read: transformers 5's `rope_parameters` per layer type, and the
//! older `rope_theta` (global) + `rope_scaling` (global only) + `rope_local_base_freq` (sliding).

use crate::arch::{Rope, RopeScaling};
use crate::checkpoint::config::token_ids;
use crate::Error;
use serde::Deserialize;
use serde_json::Value;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerType {
    /// Sliding-window attention with the local RoPE table.
    Sliding,
    /// Global attention with the global (scaled) RoPE table.
    Full,
}

/// Everything the Gemma 3 builders need.
#[derive(Debug, Clone, PartialEq)]
pub struct Gemma3Spec {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub eps: f32,
    /// Attention scores are scaled by `query_pre_attn_scalar^-0.5` (not head_dim's).
    pub query_pre_attn_scalar: f64,
    pub sliding_window: usize,
    pub layer_types: Vec<LayerType>,
    pub rope_global: Rope,
    pub rope_local: Rope,
    pub final_logit_softcapping: Option<f64>,
    pub context_length: usize,
    pub tied: bool,
    /// The placeholder token whose embedding rows image features replace (multimodal configs).
    pub image_token_id: Option<u32>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
}

/// `Gemma3TextConfig`'s fields with its defaults.
#[derive(Debug, Clone, Deserialize)]
struct TextConfig {
    #[serde(default = "d_vocab")]
    vocab_size: usize,
    #[serde(default = "d_hidden")]
    hidden_size: usize,
    #[serde(default = "d_intermediate")]
    intermediate_size: usize,
    #[serde(default = "d_layers")]
    num_hidden_layers: usize,
    #[serde(default = "d_heads")]
    num_attention_heads: usize,
    #[serde(default = "d_kv_heads")]
    num_key_value_heads: usize,
    #[serde(default = "d_head_dim")]
    head_dim: usize,
    #[serde(default)]
    hidden_activation: Option<String>,
    #[serde(default)]
    hidden_act: Option<String>,
    #[serde(default = "d_ctx")]
    max_position_embeddings: usize,
    #[serde(default = "d_eps")]
    rms_norm_eps: f64,
    #[serde(default = "d_scalar")]
    query_pre_attn_scalar: f64,
    #[serde(default = "d_window")]
    sliding_window: usize,
    #[serde(default)]
    layer_types: Option<Vec<String>>,
    #[serde(default)]
    sliding_window_pattern: Option<usize>,
    #[serde(default)]
    rope_parameters: Option<Value>,
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default)]
    rope_scaling: Option<Value>,
    #[serde(default)]
    rope_local_base_freq: Option<f64>,
    #[serde(default)]
    final_logit_softcapping: Option<f64>,
    #[serde(default)]
    attn_logit_softcapping: Option<f64>,
    #[serde(default)]
    attention_bias: Option<bool>,
    #[serde(default)]
    use_bidirectional_attention: Option<bool>,
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
    #[serde(default)]
    image_token_index: Option<u32>,
    #[serde(default)]
    bos_token_id: Option<Value>,
    #[serde(default)]
    eos_token_id: Option<Value>,
    #[serde(default)]
    pad_token_id: Option<Value>,
}

fn d_vocab() -> usize {
    262_208
}
fn d_hidden() -> usize {
    2304
}
fn d_intermediate() -> usize {
    9216
}
fn d_layers() -> usize {
    26
}
fn d_heads() -> usize {
    8
}
fn d_kv_heads() -> usize {
    4
}
fn d_head_dim() -> usize {
    256
}
fn d_ctx() -> usize {
    131_072
}
fn d_eps() -> f64 {
    1e-6
}
fn d_scalar() -> f64 {
    256.0
}
fn d_window() -> usize {
    4096
}

const GLOBAL_THETA: f64 = 1_000_000.0;
const LOCAL_THETA: f64 = 10_000.0;

/// True when `config.json` describes a Gemma 3 model (either layout).
pub fn is_gemma3(cfg: &Value) -> bool {
    let arch = cfg
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(|a| a.as_str());
    let model_type = cfg.get("model_type").and_then(|m| m.as_str());
    matches!(
        arch,
        Some("Gemma3ForCausalLM" | "Gemma3ForConditionalGeneration")
    ) || matches!(model_type, Some("gemma3" | "gemma3_text"))
}

impl Gemma3Spec {
    pub fn load(path: &Path) -> Result<Gemma3Spec, Error> {
        let v: Value = crate::checkpoint::read_json(path)?;
        Self::from_json(&v, path)
    }

    pub fn from_json(v: &Value, path: &Path) -> Result<Gemma3Spec, Error> {
        let err = |msg: String| Error::Config {
            path: path.to_path_buf(),
            msg,
        };
        // Multimodal: the text model is `text_config`; the image token and (usually) the special
        // tokens live in the outer config.
        let (text, outer) = match v.get("text_config") {
            Some(t) if !t.is_null() => (t, Some(v)),
            _ => (v, None),
        };
        let t: TextConfig = serde_json::from_value(text.clone())
            .map_err(|e| err(format!("Gemma 3 text config: {e}")))?;
        let outer_u32 = |k: &str| {
            outer
                .and_then(|o| o.get(k))
                .and_then(|x| x.as_u64())
                .map(|x| x as u32)
        };
        let act = t
            .hidden_activation
            .as_deref()
            .or(t.hidden_act.as_deref())
            .unwrap_or("gelu_pytorch_tanh");
        if act != "gelu_pytorch_tanh" {
            return Err(err(format!(
                "hidden_activation {act:?}: only gelu_pytorch_tanh is supported"
            )));
        }
        if let Some(c) = t.attn_logit_softcapping {
            return Err(err(format!(
                "attn_logit_softcapping {c}: attention softcapping is not supported (Gemma 3 \
                 checkpoints set it to null; Gemma 2 is a different architecture)"
            )));
        }
        if t.attention_bias == Some(true) {
            return Err(err("attention_bias: biases are not supported".into()));
        }
        if t.use_bidirectional_attention == Some(true) {
            return Err(err(
                "use_bidirectional_attention: only causal attention is supported".into(),
            ));
        }
        let (heads, kv_heads) = (t.num_attention_heads, t.num_key_value_heads);
        if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(err(format!(
                "num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
            )));
        }
        if t.head_dim == 0 || !t.head_dim.is_multiple_of(2) {
            return Err(err(format!("head_dim {} is not even", t.head_dim)));
        }
        let layer_types = match &t.layer_types {
            Some(types) => {
                if types.len() != t.num_hidden_layers {
                    return Err(err(format!(
                        "layer_types has {} entries for {} layers",
                        types.len(),
                        t.num_hidden_layers
                    )));
                }
                types
                    .iter()
                    .map(|s| match s.as_str() {
                        "sliding_attention" => Ok(LayerType::Sliding),
                        "full_attention" => Ok(LayerType::Full),
                        other => Err(err(format!("layer type {other:?}"))),
                    })
                    .collect::<Result<Vec<_>, _>>()?
            }
            // Older configs: every `sliding_window_pattern`-th layer is global.
            None => {
                let k = t.sliding_window_pattern.unwrap_or(6).max(1);
                (0..t.num_hidden_layers)
                    .map(|i| {
                        if (i + 1).is_multiple_of(k) {
                            LayerType::Full
                        } else {
                            LayerType::Sliding
                        }
                    })
                    .collect()
            }
        };
        let (rope_global, rope_local) = ropes(&t).map_err(err)?;
        let eos = {
            let inner = token_ids(&t.eos_token_id);
            let outer_eos = token_ids(&outer.and_then(|o| o.get("eos_token_id")).cloned());
            if outer_eos.is_empty() {
                inner
            } else {
                outer_eos
            }
        };
        let first = |k: &str, inner: &Option<Value>| {
            token_ids(&outer.and_then(|o| o.get(k)).cloned())
                .first()
                .copied()
                .or_else(|| token_ids(inner).first().copied())
        };
        Ok(Gemma3Spec {
            hidden: t.hidden_size,
            intermediate: t.intermediate_size,
            layers: t.num_hidden_layers,
            heads,
            kv_heads,
            head_dim: t.head_dim,
            vocab: t.vocab_size,
            eps: t.rms_norm_eps as f32,
            query_pre_attn_scalar: t.query_pre_attn_scalar,
            sliding_window: t.sliding_window,
            layer_types,
            rope_global,
            rope_local,
            final_logit_softcapping: t.final_logit_softcapping,
            context_length: t.max_position_embeddings,
            tied: outer
                .and_then(|o| o.get("tie_word_embeddings"))
                .and_then(|x| x.as_bool())
                .or(t.tie_word_embeddings)
                .unwrap_or(true),
            image_token_id: outer_u32("image_token_index")
                .or_else(|| outer_u32("image_token_id"))
                .or(t.image_token_index)
                .or_else(|| {
                    // Gemma3Config's default, when a multimodal config leaves it out.
                    outer.map(|_| 262_144)
                }),
            bos_token_id: first("bos_token_id", &t.bos_token_id).or(Some(2)),
            eos_token_ids: if eos.is_empty() { vec![1] } else { eos },
            pad_token_id: first("pad_token_id", &t.pad_token_id).or(Some(0)),
        })
    }
}

/// (global, local) RoPE settings from either layout.
fn ropes(t: &TextConfig) -> Result<(Rope, Rope), String> {
    if let Some(p) = t.rope_parameters.as_ref().filter(|p| !p.is_null()) {
        let one = |key: &str, default_theta: f64| -> Result<Rope, String> {
            match p.get(key) {
                None | Some(Value::Null) => Ok(Rope {
                    theta: default_theta,
                    scaling: None,
                }),
                Some(block) => Ok(Rope {
                    theta: block
                        .get("rope_theta")
                        .and_then(|x| x.as_f64())
                        .unwrap_or(default_theta),
                    scaling: scaling(block)?,
                }),
            }
        };
        if p.get("full_attention").is_some() || p.get("sliding_attention").is_some() {
            return Ok((
                one("full_attention", GLOBAL_THETA)?,
                one("sliding_attention", LOCAL_THETA)?,
            ));
        }
    }
    let global = Rope {
        theta: t.rope_theta.unwrap_or(GLOBAL_THETA),
        scaling: match t.rope_scaling.as_ref().filter(|s| !s.is_null()) {
            Some(s) => scaling(s)?,
            None => None,
        },
    };
    let local = Rope {
        theta: t.rope_local_base_freq.unwrap_or(LOCAL_THETA),
        scaling: None,
    };
    Ok((global, local))
}

fn scaling(block: &Value) -> Result<Option<RopeScaling>, String> {
    let kind = block
        .get("rope_type")
        .or_else(|| block.get("type"))
        .and_then(|x| x.as_str())
        .unwrap_or("default");
    match kind {
        "default" => Ok(None),
        "linear" => Ok(Some(RopeScaling::Linear {
            factor: block.get("factor").and_then(|x| x.as_f64()).unwrap_or(1.0),
        })),
        other => Err(format!(
            "rope scaling type {other:?} (supported for Gemma 3: default, linear)"
        )),
    }
}

#[cfg(test)]
mod tests;
