//! Gemma 3 text weights by name, in the three layouts checkpoints use: text-only
//! (`model.layers.*`, Gemma3ForCausalLM), multimodal as transformers ≥ 4.52 saves it
//! (`model.language_model.layers.*`) and as the original Gemma 3 uploads have it
//! (`language_model.model.layers.*`).

use super::Gemma3Spec;
use crate::checkpoint::{Tensor, TensorSource};
use crate::Error;

/// Where the text model's tensors live in a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// Prefix of `embed_tokens`, `layers.{i}`, `norm`: `model.`, `model.language_model.` or
    /// `language_model.model.`.
    pub prefix: String,
    /// An untied head, if the checkpoint has one.
    pub lm_head: Option<String>,
}

const PREFIXES: [&str; 3] = ["model.", "model.language_model.", "language_model.model."];

impl Names {
    pub fn resolve(src: &dyn TensorSource) -> Result<Names, Error> {
        let prefix = PREFIXES
            .iter()
            .find(|p| src.contains(&format!("{p}embed_tokens.weight")))
            .ok_or_else(|| Error::MissingTensor {
                file: src.file_of("model.embed_tokens.weight"),
                tensor: format!(
                    "embed_tokens.weight (looked for {})",
                    PREFIXES
                        .map(|p| format!("{p}embed_tokens.weight"))
                        .join(", ")
                ),
            })?;
        let lm_head = ["lm_head.weight", "language_model.lm_head.weight"]
            .into_iter()
            .find(|n| src.contains(n))
            .map(str::to_string);
        Ok(Names {
            prefix: prefix.to_string(),
            lm_head,
        })
    }

    pub fn embed(&self) -> String {
        format!("{}embed_tokens.weight", self.prefix)
    }
    pub fn norm(&self) -> String {
        format!("{}norm.weight", self.prefix)
    }
    pub fn layer(&self, i: usize, rest: &str) -> String {
        format!("{}layers.{i}.{rest}", self.prefix)
    }
}

/// One layer's weights, `[out, in]` as stored, q/k/v and gate/up fused into one matrix each, and
/// every norm weight already `1 + w` (Gemma's RMSNorm scales by one plus the stored weight).
pub struct LayerWeights {
    pub qkv: Tensor,
    pub o: Tensor,
    pub gate_up: Tensor,
    pub down: Tensor,
    /// Width of the MLP after compaction (`intermediate` when nothing was compacted).
    pub intermediate: usize,
    pub input_ln: Tensor,
    pub post_attn_ln: Tensor,
    pub pre_ff_ln: Tensor,
    pub post_ff_ln: Tensor,
    pub q_norm: Tensor,
    pub k_norm: Tensor,
}

/// Gemma's `x̂ · (1 + w)`: the one is folded into the stored weight, computed in f32 as
/// transformers does (`1.0 + self.weight.float()`).
pub fn gemma_norm(t: Tensor) -> Tensor {
    Tensor::new(t.shape, t.data.into_iter().map(|w| 1.0 + w).collect())
}

/// What compaction did to one layer's MLP.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Compaction {
    pub layer: usize,
    pub intermediate: usize,
    pub kept: usize,
}

pub fn layer_weights(
    spec: &Gemma3Spec,
    names: &Names,
    src: &dyn TensorSource,
    i: usize,
    compact: bool,
) -> Result<(LayerWeights, Option<Compaction>), Error> {
    let (h, d, im) = (spec.hidden, spec.head_dim, spec.intermediate);
    let (q_out, kv_out) = (spec.heads * d, spec.kv_heads * d);
    let get = |rest: &str, shape: &[usize]| src.get_shaped(&names.layer(i, rest), shape);
    let norm = |rest: &str, n: usize| get(rest, &[n]).map(gemma_norm);
    let q = get("self_attn.q_proj.weight", &[q_out, h])?;
    let k = get("self_attn.k_proj.weight", &[kv_out, h])?;
    let v = get("self_attn.v_proj.weight", &[kv_out, h])?;
    let mut gate = get("mlp.gate_proj.weight", &[im, h])?;
    let mut up = get("mlp.up_proj.weight", &[im, h])?;
    let mut down = get("mlp.down_proj.weight", &[h, im])?;
    let mut compaction = None;
    if compact {
        let c = crate::prune::structured::compact_mlp(&gate, &up, &down)
            .map_err(|m| Error::Internal(format!("layer {i}: {m}")))?;
        compaction = Some(Compaction {
            layer: i,
            intermediate: im,
            kept: c.kept.len(),
        });
        if c.kept.is_empty() {
            return Err(Error::Unsupported(format!(
                "layer {i}: structured pruning left no MLP channel; lower --sparsity"
            )));
        }
        (gate, up, down) = (c.gate, c.up, c.down);
    }
    let intermediate = gate.shape[0];
    Ok((
        LayerWeights {
            qkv: Tensor::concat_rows(&[q, k, v]),
            o: get("self_attn.o_proj.weight", &[h, q_out])?,
            gate_up: Tensor::concat_rows(&[gate, up]),
            down,
            intermediate,
            input_ln: norm("input_layernorm.weight", h)?,
            post_attn_ln: norm("post_attention_layernorm.weight", h)?,
            pre_ff_ln: norm("pre_feedforward_layernorm.weight", h)?,
            post_ff_ln: norm("post_feedforward_layernorm.weight", h)?,
            q_norm: norm("self_attn.q_norm.weight", d)?,
            k_norm: norm("self_attn.k_norm.weight", d)?,
        },
        compaction,
    ))
}
