//! The Llama-family decoder graph.
//!
//! ```text
//! input_ids ─ Gather(embed) ─ SimplifiedLayerNorm ─┐
//! per layer:  MatMul(qkv, fused) ─ GroupQueryAttention(past, seqlens_k, total_len, [cos, sin])
//!             ─ MatMul(o) ─ SkipSimplifiedLayerNorm(+residual) ─ MatMul(gate_up) ─ Split
//!             ─ SiLU(gate)·up ─ MatMul(down) ─ SkipSimplifiedLayerNorm(+residual, next norm)
//! final:      SkipSimplifiedLayerNorm(model.norm) ─ MatMul(lm_head) ─ logits
//! ```
//! q/k/v and gate/up are fused into one matrix each (Phi-3 ships them fused) so every layer has
//! four matmuls; GroupQueryAttention takes the packed QKV. Positions come from the attention mask:
//! `seqlens_k = sum(mask) - 1`, `total_sequence_length = mask.shape[1]`, and GQA rotates q/k at
//! those positions itself on RoPE layers (`do_rotary=1`); NoPE layers get no cos/sin inputs.

use super::graph::{self, Ctx};
pub use super::graph::{PAST_KEY, PAST_VALUE, PRESENT_KEY, PRESENT_VALUE};
use super::weights::layer_weights;
use super::{rope, DecoderSpec, Dtype};
use crate::checkpoint::{Tensor, TensorSource};
use crate::format::{DecoderConfig, DecoderIo, SpecialTokens, FORMAT_VERSION};
use crate::onnx::{Attr, DataType, GraphBuilder, MS_DOMAIN};
use crate::quant::{Policy, Scheme, TensorReport};
use crate::Error;

pub struct Options {
    pub dtype: Dtype,
    pub policy: Policy,
}

/// Emits the decoder into `g`; returns the engine config and the per-tensor quantisation report.
pub fn build(
    spec: &DecoderSpec,
    src: &dyn TensorSource,
    g: &mut GraphBuilder,
    opts: &Options,
) -> Result<(DecoderConfig, Vec<TensorReport>), Error> {
    let dt = opts.dtype.onnx();
    let (h, d, kvh) = (spec.hidden, spec.head_dim, spec.kv_heads);
    let mut cx = Ctx {
        g,
        dtype: opts.dtype,
        reports: Vec::new(),
    };

    // Inputs and outputs.
    cx.g.input(
        "input_ids",
        DataType::Int64,
        &[graph::BATCH.into(), graph::SEQ.into()],
    );
    graph::declare_kv_io(cx.g, dt, spec.layers, kvh, d, spec.vocab);
    let (seqlens_k, total_len) = graph::sequence_lengths(cx.g);

    // Rotary tables, shared by every RoPE layer.
    let rotary = if spec.rope_layers.iter().any(|&r| r) {
        let (cos, sin) = rope::caches(&spec.rope, d, spec.context_length);
        let shape = [spec.context_length, d / 2];
        let c = cx.weight("cos_cache", &Tensor::new(shape.to_vec(), cos))?;
        let s = cx.weight("sin_cache", &Tensor::new(shape.to_vec(), sin))?;
        Some((c, s))
    } else {
        None
    };

    // Embeddings.
    let embed = src.get_shaped("model.embed_tokens.weight", &[spec.vocab, h])?;
    let embed_name = cx.weight("model.embed_tokens.weight", &embed)?;
    let mut residual = cx.g.op(
        "/model/embed_tokens/Gather",
        "Gather",
        &[&embed_name, "input_ids"],
        &[],
    );
    // Keep the f32 embedding only when the lm_head will be quantised from it: a tied,
    // unquantised head reuses the initializer already written (1 GB less at 3B scale).
    let tied = spec.tied && !src.contains("lm_head.weight");
    let tied_embed = if tied && opts.policy.lm_head != Scheme::None {
        Some(embed)
    } else {
        drop(embed);
        None
    };

    let mut pending: Option<String> = None; // the last block's output, not yet added to residual
    for i in 0..spec.layers {
        let lw = layer_weights(spec, src, i)?;
        let p = format!("model.layers.{i}");
        let ln1 = cx.weight(&format!("{p}.input_layernorm.weight"), &lw.ln1)?;
        let hidden = graph::input_norm(cx.g, &p, &mut residual, pending.take(), &ln1, spec.eps);

        // Attention.
        let qkv = cx.linear(
            &format!("{p}.self_attn.qkv_proj"),
            &hidden,
            &lw.qkv,
            opts.policy.linear,
        )?;
        let past_k = DecoderIo::layer(PAST_KEY, i);
        let past_v = DecoderIo::layer(PAST_VALUE, i);
        let use_rope = spec.rope_layers[i];
        let mut inputs: Vec<&str> = vec![&qkv, "", "", &past_k, &past_v, &seqlens_k, &total_len];
        if use_rope {
            let (c, s) = rotary
                .as_ref()
                .expect("rotary tables exist when a layer uses RoPE");
            inputs.push(c);
            inputs.push(s);
        }
        let mut attrs = vec![
            ("num_heads", Attr::Int(spec.heads as i64)),
            ("kv_num_heads", Attr::Int(kvh as i64)),
            ("scale", Attr::Float(1.0 / (d as f32).sqrt())),
            ("do_rotary", Attr::Int(use_rope as i64)),
            ("rotary_interleaved", Attr::Int(0)),
        ];
        if let Some(w) = spec.sliding_window {
            attrs.push(("local_window_size", Attr::Int(w as i64)));
        }
        let attn = format!("/{p}/attn/GroupQueryAttention/output_0");
        cx.g.node_with(
            &format!("/{p}/attn/GroupQueryAttention"),
            "GroupQueryAttention",
            MS_DOMAIN,
            &inputs,
            &[
                attn.clone(),
                DecoderIo::layer(PRESENT_KEY, i),
                DecoderIo::layer(PRESENT_VALUE, i),
            ],
            &attrs,
        );
        let o = cx.linear(
            &format!("{p}.self_attn.o_proj"),
            &attn,
            &lw.o,
            opts.policy.linear,
        )?;

        // MLP.
        let ln2 = cx.weight(&format!("{p}.post_attention_layernorm.weight"), &lw.ln2)?;
        let (hidden2, res2) = graph::skip_norm(
            cx.g,
            &format!("/{p}/post_attention_layernorm/SkipLayerNorm"),
            &o,
            &residual,
            &ln2,
            spec.eps,
        );
        residual = res2;
        pending = Some(cx.gated_mlp(
            &p,
            &hidden2,
            &lw.gate_up,
            &lw.down,
            opts.policy.linear,
            |g, gate| graph::silu(g, &format!("/{p}/mlp/act"), gate),
        )?);
    }

    let norm = src.get_shaped("model.norm.weight", &[h])?;
    let norm = cx.weight("model.norm.weight", &norm)?;
    let hidden = graph::final_norm(cx.g, pending, &residual, &norm, spec.eps)?;

    let logits_tmp = match (&tied_embed, opts.policy.lm_head) {
        // Tied and unquantised: reuse the embedding initializer; ORT folds the transpose once.
        (None, Scheme::None) if tied => graph::tied_head(cx.g, &hidden, &embed_name),
        (Some(e), scheme) => cx.linear("lm_head", &hidden, e, scheme)?,
        (None, scheme) => {
            let w = src.get_shaped("lm_head.weight", &[spec.vocab, h])?;
            cx.linear("lm_head", &hidden, &w, scheme)?
        }
    };
    graph::logits_output(cx.g, &logits_tmp);

    let config = DecoderConfig {
        format_version: FORMAT_VERSION,
        graph: "model.onnx".into(),
        num_layers: spec.layers,
        num_heads: spec.heads,
        num_kv_heads: kvh,
        head_dim: d,
        hidden_size: h,
        vocab_size: spec.vocab,
        context_length: spec.context_length,
        kv_dtype: opts.dtype.element_name().into(),
        io: graph::decoder_io(Some("input_ids"), None),
        tokens: SpecialTokens {
            bos_token_id: spec.bos_token_id,
            eos_token_ids: spec.eos_token_ids.clone(),
            pad_token_id: spec.pad_token_id,
        },
        embed: None,
        vision: None,
    };
    Ok((config, cx.reports))
}
