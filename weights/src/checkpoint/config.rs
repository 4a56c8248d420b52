//! `config.json` as Hugging Face writes it for the Llama family, and its normalisation into a
//! [`DecoderSpec`] the graph builder consumes. Both the old (`rope_theta`, `rope_scaling`) and the
//! transformers 5 (`rope_parameters`) layouts are accepted.

use crate::arch::{Arch, DecoderSpec, Rope, RopeScaling};
use crate::Error;
use serde::Deserialize;
use serde_json::Value;
use std::path::Path;

#[derive(Debug, Clone, Deserialize)]
pub struct HfConfig {
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default)]
    pub model_type: Option<String>,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    pub vocab_size: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_scaling: Option<Value>,
    #[serde(default)]
    pub rope_parameters: Option<Value>,
    #[serde(default)]
    pub partial_rotary_factor: Option<f64>,
    #[serde(default = "default_ctx")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
    #[serde(default)]
    pub hidden_act: Option<String>,
    #[serde(default)]
    pub attention_bias: Option<bool>,
    #[serde(default)]
    pub mlp_bias: Option<bool>,
    #[serde(default)]
    pub sliding_window: Option<usize>,
    #[serde(default)]
    pub use_sliding_window: Option<bool>,
    /// SmolLM3: 1 where the layer uses RoPE, 0 for NoPE.
    #[serde(default)]
    pub no_rope_layers: Option<Vec<u8>>,
    #[serde(default)]
    pub no_rope_layer_interval: Option<usize>,
    #[serde(default)]
    pub bos_token_id: Option<Value>,
    #[serde(default)]
    pub eos_token_id: Option<Value>,
    #[serde(default)]
    pub pad_token_id: Option<Value>,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_ctx() -> usize {
    2048
}

/// Token id fields may be a number, a list, or null.
pub fn token_ids(v: &Option<Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        _ => Vec::new(),
    }
}

pub const SUPPORTED: &str = "LlamaForCausalLM, SmolLM3ForCausalLM, Phi3ForCausalLM";

impl HfConfig {
    pub fn load(path: &Path) -> Result<Self, Error> {
        super::read_json(path)
    }

    /// The architecture from `architectures[0]`, falling back to `model_type`.
    pub fn arch(&self, path: &Path) -> Result<Arch, Error> {
        let name = self
            .architectures
            .first()
            .cloned()
            .or_else(|| self.model_type.clone())
            .unwrap_or_default();
        Ok(match name.as_str() {
            "LlamaForCausalLM" | "llama" | "MistralForCausalLM" => Arch::Llama,
            "SmolLM3ForCausalLM" | "smollm3" => Arch::SmolLM3,
            "Phi3ForCausalLM" | "phi3" => Arch::Phi3,
            _ => {
                return Err(Error::UnknownArchitecture {
                    path: path.to_path_buf(),
                    name,
                    supported: SUPPORTED.into(),
                })
            }
        })
    }

    pub fn spec(&self, path: &Path) -> Result<DecoderSpec, Error> {
        let arch = self.arch(path)?;
        let cfg_err = |msg: String| Error::Config {
            path: path.to_path_buf(),
            msg,
        };
        let heads = self.num_attention_heads;
        let kv_heads = self.num_key_value_heads.unwrap_or(heads);
        if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(cfg_err(format!(
                "num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
            )));
        }
        let head_dim = self.head_dim.unwrap_or(self.hidden_size / heads);
        if let Some(act) = &self.hidden_act {
            if act != "silu" {
                return Err(cfg_err(format!(
                    "hidden_act {act:?}: only silu is supported"
                )));
            }
        }
        if self.attention_bias == Some(true) || self.mlp_bias == Some(true) {
            return Err(cfg_err("attention/mlp biases are not supported".into()));
        }
        let rope = self.rope(path)?;
        let rope_layers: Vec<bool> = match arch {
            Arch::SmolLM3 => match (&self.no_rope_layers, self.no_rope_layer_interval) {
                (Some(v), _) => {
                    if v.len() != self.num_hidden_layers {
                        return Err(cfg_err(format!(
                            "no_rope_layers has {} entries for {} layers",
                            v.len(),
                            self.num_hidden_layers
                        )));
                    }
                    v.iter().map(|&x| x != 0).collect()
                }
                (None, interval) => {
                    let k = interval.unwrap_or(4);
                    (0..self.num_hidden_layers)
                        .map(|i| !(i + 1).is_multiple_of(k))
                        .collect()
                }
            },
            _ => vec![true; self.num_hidden_layers],
        };
        // Sliding windows only where the config turns them on (SmolLM3 and Phi-3 carry a
        // `sliding_window` value that is inactive unless `use_sliding_window` is set or, for
        // Phi-3, when it is below the context length).
        let sliding_window = match arch {
            Arch::Phi3 => self
                .sliding_window
                .filter(|&w| w < self.max_position_embeddings),
            _ => self
                .sliding_window
                .filter(|_| self.use_sliding_window == Some(true)),
        };
        let tied = self.tie_word_embeddings.unwrap_or(arch == Arch::SmolLM3);
        Ok(DecoderSpec {
            arch,
            hidden: self.hidden_size,
            intermediate: self.intermediate_size,
            layers: self.num_hidden_layers,
            heads,
            kv_heads,
            head_dim,
            vocab: self.vocab_size,
            eps: self.rms_norm_eps as f32,
            rope,
            rope_layers,
            tied,
            context_length: self.max_position_embeddings,
            sliding_window,
            bos_token_id: token_ids(&self.bos_token_id).first().copied(),
            eos_token_ids: token_ids(&self.eos_token_id),
            pad_token_id: token_ids(&self.pad_token_id).first().copied(),
        })
    }

    fn rope(&self, path: &Path) -> Result<Rope, Error> {
        let params = self.rope_parameters.as_ref();
        let theta = params
            .and_then(|p| p.get("rope_theta"))
            .and_then(|v| v.as_f64())
            .or(self.rope_theta)
            .unwrap_or(10000.0);
        let partial = params
            .and_then(|p| p.get("partial_rotary_factor"))
            .and_then(|v| v.as_f64())
            .or(self.partial_rotary_factor)
            .unwrap_or(1.0);
        if partial != 1.0 {
            return Err(Error::Unsupported(format!(
                "{}: partial_rotary_factor {partial}",
                path.display()
            )));
        }
        // The scaling block: transformers 5 folds it into rope_parameters.
        let scaling = params
            .filter(|p| p.get("rope_type").is_some())
            .or(self.rope_scaling.as_ref())
            .filter(|v| !v.is_null());
        let scaling = match scaling {
            None => None,
            Some(s) => {
                let kind = s
                    .get("rope_type")
                    .or_else(|| s.get("type"))
                    .and_then(|v| v.as_str())
                    .unwrap_or("default");
                let f = |k: &str| s.get(k).and_then(|v| v.as_f64());
                match kind {
                    "default" => None,
                    "linear" => Some(RopeScaling::Linear {
                        factor: f("factor").unwrap_or(1.0),
                    }),
                    "llama3" => Some(RopeScaling::Llama3 {
                        factor: f("factor").unwrap_or(8.0),
                        low_freq_factor: f("low_freq_factor").unwrap_or(1.0),
                        high_freq_factor: f("high_freq_factor").unwrap_or(4.0),
                        original_max_position_embeddings: f("original_max_position_embeddings")
                            .unwrap_or(8192.0),
                    }),
                    other => {
                        return Err(Error::Unsupported(format!(
                            "{}: rope scaling type {other:?} (supported: default, linear, llama3)",
                            path.display()
                        )))
                    }
                }
            }
        };
        Ok(Rope { theta, scaling })
    }
}
