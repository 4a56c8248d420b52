//! Gemma 3 GGUF files (llama.cpp's `gemma3` architecture: the text model only) seen as a Hugging
//! Face checkpoint: the `config.json` a `Gemma3ForCausalLM` would have, and the tensors under
//! Hugging Face names, so that the text builder needs no GGUF knowledge.
//!
//! What llama.cpp's converter changed, undone here (as transformers' GGUF loader does):
//! - every `*norm.weight` was stored as `1 + w` (llama.cpp multiplies by the stored gain): 1 is
//!   subtracted back, so the builder applies Gemma's `(1 + w)` as for any Gemma 3 checkpoint;
//! - nothing else: Q/K rows are not permuted for Gemma (it uses NeoX-style rotation), and the
//!   embedding is stored unscaled (the √hidden scale is applied at run time, as in transformers).
//!
//! Hyperparameters the file does not carry are llama.cpp's (`llama_load_hparams_gemma3`): local
//! (sliding) layers every layer but each sixth, their rope θ 10 000 without scaling; attention
//! scale 1/√key_length (`query_pre_attn_scalar` = key_length), except the 62-layer 27B model,
//! whose scalar is hidden / heads.

use super::dequant::dequantize;
use super::reader::{Gguf, Value};
use crate::checkpoint::{Tensor, TensorSource};
use crate::Error;
use memmap2::Mmap;
use serde_json::{json, Value as Json};
use std::path::{Path, PathBuf};

pub struct Gemma3GgufSource {
    gguf: Gguf,
    map: Mmap,
}

/// Opens a Gemma 3 GGUF: (the equivalent `config.json`, the tensors under Hugging Face names).
pub fn open(path: &Path) -> Result<(Json, Gemma3GgufSource), Error> {
    let (gguf, map) = super::map_file(path)?;
    let config = config(&gguf)?;
    Ok((config, Gemma3GgufSource { gguf, map }))
}

/// The GGUF tensor for a Hugging Face name (with or without the multimodal `language_model.`
/// prefix), and whether it is a norm stored as `1 + w`.
fn gguf_name(hf: &str) -> Option<(String, bool)> {
    let hf = hf.strip_prefix("language_model.").unwrap_or(hf);
    match hf {
        "model.embed_tokens.weight" => return Some(("token_embd.weight".into(), false)),
        "model.norm.weight" => return Some(("output_norm.weight".into(), true)),
        "lm_head.weight" => return Some(("output.weight".into(), false)),
        _ => {}
    }
    let (i, rest) = hf.strip_prefix("model.layers.")?.split_once('.')?;
    let (g, norm) = match rest {
        "input_layernorm.weight" => ("attn_norm", true),
        "self_attn.q_proj.weight" => ("attn_q", false),
        "self_attn.k_proj.weight" => ("attn_k", false),
        "self_attn.v_proj.weight" => ("attn_v", false),
        "self_attn.o_proj.weight" => ("attn_output", false),
        "self_attn.q_norm.weight" => ("attn_q_norm", true),
        "self_attn.k_norm.weight" => ("attn_k_norm", true),
        "post_attention_layernorm.weight" => ("post_attention_norm", true),
        "pre_feedforward_layernorm.weight" => ("ffn_norm", true),
        "post_feedforward_layernorm.weight" => ("post_ffw_norm", true),
        "mlp.gate_proj.weight" => ("ffn_gate", false),
        "mlp.up_proj.weight" => ("ffn_up", false),
        "mlp.down_proj.weight" => ("ffn_down", false),
        _ => return None,
    };
    Some((format!("blk.{i}.{g}.weight"), norm))
}

impl Gemma3GgufSource {
    /// The parsed file (metadata: the tokenizer).
    pub fn gguf(&self) -> &Gguf {
        &self.gguf
    }
}

/// Whether `path` is a GGUF file of llama.cpp's `gemma3` architecture (reads the header only).
pub fn is_gemma3_file(path: &Path) -> Result<bool, Error> {
    let (g, _map) = super::map_file(path)?;
    Ok(super::architecture(&g) == "gemma3")
}

impl TensorSource for Gemma3GgufSource {
    fn get(&self, name: &str) -> Result<Tensor, Error> {
        let missing = |t: String| Error::MissingTensor {
            file: self.gguf.path.clone(),
            tensor: t,
        };
        let (gname, norm) = gguf_name(name).ok_or_else(|| missing(name.to_string()))?;
        let info = self
            .gguf
            .tensors
            .get(&gname)
            .ok_or_else(|| missing(gname))?;
        let mut data = Vec::with_capacity(info.shape.iter().product());
        dequantize(info.ty, &self.map[info.start..info.end], &mut data);
        if norm {
            data.iter_mut().for_each(|v| *v -= 1.0);
        }
        Ok(Tensor::new(info.shape.clone(), data))
    }

    fn contains(&self, name: &str) -> bool {
        gguf_name(name).is_some_and(|(g, _)| self.gguf.tensors.contains_key(&g))
    }

    fn file_of(&self, _name: &str) -> PathBuf {
        self.gguf.path.clone()
    }
}

/// `config.json` of the equivalent `Gemma3ForCausalLM` (transformers' `Gemma3TextConfig` keys).
pub fn config(g: &Gguf) -> Result<Json, Error> {
    super::require_architecture(g, "gemma3")?;
    let bad = |msg: String| super::metadata_error(g, msg);
    let get = |k: &str| g.metadata.get(&format!("gemma3.{k}"));
    let uint = |k: &str| -> Result<u64, Error> {
        get(k)
            .and_then(Value::as_u64)
            .ok_or_else(|| bad(format!("metadata gemma3.{k} is missing or not a number")))
    };
    let hidden = uint("embedding_length")?;
    let heads = uint("attention.head_count")?;
    let layers = uint("block_count")?;
    let head_dim = get("attention.key_length")
        .and_then(Value::as_u64)
        .unwrap_or(256);
    let window = get("attention.sliding_window").and_then(Value::as_u64);
    let layer_types: Vec<&str> = (0..layers)
        .map(|i| match window {
            Some(w) if w > 0 && (i + 1) % 6 != 0 => "sliding_attention",
            _ => "full_attention",
        })
        .collect();
    let mut full = json!({
        "rope_type": "default",
        "rope_theta": get("rope.freq_base").and_then(Value::as_f64).unwrap_or(1e6),
    });
    match get("rope.scaling.type").and_then(Value::as_str) {
        None | Some("none") => {}
        Some("linear") => {
            let factor = get("rope.scaling.factor")
                .and_then(Value::as_f64)
                .ok_or_else(|| {
                    bad("linear rope scaling without gemma3.rope.scaling.factor".into())
                })?;
            full["rope_type"] = json!("linear");
            full["factor"] = json!(factor);
        }
        Some(other) => {
            return Err(Error::Unsupported(format!(
                "{}: gemma3 rope scaling {other:?}",
                g.path.display()
            )))
        }
    }
    let vocab = super::vocab_size(g)?;
    let tok = |k: &str| {
        g.metadata
            .get(&format!("tokenizer.ggml.{k}"))
            .and_then(Value::as_u64)
    };
    Ok(json!({
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "hidden_size": hidden,
        "intermediate_size": uint("feed_forward_length")?,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": get("attention.head_count_kv").and_then(Value::as_u64).unwrap_or(heads),
        "head_dim": head_dim,
        "vocab_size": vocab,
        "max_position_embeddings": uint("context_length")?,
        "rms_norm_eps": get("attention.layer_norm_rms_epsilon").and_then(Value::as_f64).unwrap_or(1e-6),
        "sliding_window": window,
        "layer_types": layer_types,
        "query_pre_attn_scalar": if layers == 62 { hidden / heads } else { head_dim },
        "rope_parameters": {
            "full_attention": full,
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        },
        "final_logit_softcapping": get("final_logit_softcapping").and_then(Value::as_f64),
        "attn_logit_softcapping": Json::Null,
        "hidden_activation": "gelu_pytorch_tanh",
        "tie_word_embeddings": !g.tensors.contains_key("output.weight"),
        "bos_token_id": tok("bos_token_id"),
        "eos_token_id": tok("eos_token_id"),
        "pad_token_id": tok("padding_token_id"),
    }))
}
