//! Per-architecture weight names, and the fusion of q/k/v and gate/up into one matrix each.

use super::{Arch, DecoderSpec};
use crate::checkpoint::{Tensor, TensorSource};
use crate::Error;

/// What one layer's weights look like once fused: `[out, in]` as stored by transformers.
pub struct LayerWeights {
    pub qkv: Tensor,
    pub o: Tensor,
    pub gate_up: Tensor,
    pub down: Tensor,
    pub ln1: Tensor,
    pub ln2: Tensor,
}

pub fn layer_weights(
    spec: &DecoderSpec,
    src: &dyn TensorSource,
    i: usize,
) -> Result<LayerWeights, Error> {
    let (h, d) = (spec.hidden, spec.head_dim);
    let (q_out, kv_out) = (spec.heads * d, spec.kv_heads * d);
    let p = format!("model.layers.{i}");
    let (qkv, gate_up) = match spec.arch {
        Arch::Phi3 => (
            src.get_shaped(
                &format!("{p}.self_attn.qkv_proj.weight"),
                &[q_out + 2 * kv_out, h],
            )?,
            src.get_shaped(
                &format!("{p}.mlp.gate_up_proj.weight"),
                &[2 * spec.intermediate, h],
            )?,
        ),
        Arch::Llama | Arch::SmolLM3 => {
            let q = src.get_shaped(&format!("{p}.self_attn.q_proj.weight"), &[q_out, h])?;
            let k = src.get_shaped(&format!("{p}.self_attn.k_proj.weight"), &[kv_out, h])?;
            let v = src.get_shaped(&format!("{p}.self_attn.v_proj.weight"), &[kv_out, h])?;
            let g = src.get_shaped(
                &format!("{p}.mlp.gate_proj.weight"),
                &[spec.intermediate, h],
            )?;
            let u = src.get_shaped(&format!("{p}.mlp.up_proj.weight"), &[spec.intermediate, h])?;
            (
                Tensor::concat_rows(&[q, k, v]),
                Tensor::concat_rows(&[g, u]),
            )
        }
    };
    Ok(LayerWeights {
        qkv,
        o: src.get_shaped(&format!("{p}.self_attn.o_proj.weight"), &[h, q_out])?,
        gate_up,
        down: src.get_shaped(
            &format!("{p}.mlp.down_proj.weight"),
            &[h, spec.intermediate],
        )?,
        ln1: src.get_shaped(&format!("{p}.input_layernorm.weight"), &[h])?,
        ln2: src.get_shaped(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
    })
}
