//! The Gemma 3 text decoder graph (`decoder.onnx`), fed `inputs_embeds` from [`super::embed`].
//!
//! ```text
//! inputs_embeds ─ SimplifiedLayerNorm(input) ─┐
//! per layer: MatMul(qkv, fused) ─ Split ─ q_norm / k_norm (per head) ─ GroupQueryAttention(past,
//!            seqlens_k, total_len, cos/sin of the layer's type, local_window_size on sliding
//!            layers, scale = query_pre_attn_scalar^-0.5) ─ MatMul(o) ─ SimplifiedLayerNorm(post_attn)
//!            ─ SkipSimplifiedLayerNorm(+residual, pre_ff) ─ MatMul(gate_up) ─ Split
//!            ─ FastGelu(gate)·up ─ MatMul(down) ─ SimplifiedLayerNorm(post_ff)
//!            ─ SkipSimplifiedLayerNorm(+residual, next layer's input norm)
//! final:     SkipSimplifiedLayerNorm(norm) ─ MatMul(embed^T, tied) ─ [tanh softcap] ─ logits
//! ```
//! Checkpoints that take images also have a `token_type_ids` input: image-token queries are then
//! recomputed with bidirectional attention within their image ([`super::image_attn`]).
//! Every norm weight is stored as `1 + w` (see [`super::weights::gemma_norm`]). FastGelu is the
//! tanh approximation transformers calls `gelu_pytorch_tanh`. The KV-cache contract (names, shapes,
//! positions from the attention mask) is the Llama builder's, from [`crate::arch::graph`].

use super::layer::{attention, mlp, AttnCtx};
use super::weights::{layer_weights, Compaction, Names};
use super::{image_attn, Gemma3Spec, LayerType};
use crate::arch::graph::{self, Ctx};
use crate::arch::{rope, Dtype, Rope};
use crate::checkpoint::{Tensor, TensorSource};
use crate::format::{DecoderConfig, DecoderIo, SpecialTokens, FORMAT_VERSION};
use crate::onnx::{ExternalRef, GraphBuilder};
use crate::quant::{Policy, Scheme, TensorReport};
use crate::Error;

/// Name of the embedding initializer in the decoder (the tied head) and in the embedding graph.
pub const EMBED_WEIGHT: &str = "model.embed_tokens.weight";

pub struct Options {
    pub dtype: Dtype,
    pub policy: Policy,
    /// Drop dead MLP channels (after structured pruning) so the matrices shrink.
    pub compact: bool,
}

pub struct Built {
    /// `engine.json` without the embedding-graph section (the caller adds it).
    pub config: DecoderConfig,
    pub reports: Vec<TensorReport>,
    pub compaction: Vec<Compaction>,
    /// Where the embedding table sits in the decoder's data file, when the tied head stored it
    /// unquantised: the embedding graph points there instead of writing a second copy.
    pub embed_table: Option<ExternalRef>,
}

pub fn build(
    spec: &Gemma3Spec,
    names: &Names,
    src: &dyn TensorSource,
    g: &mut GraphBuilder,
    opts: &Options,
) -> Result<Built, Error> {
    let dt = opts.dtype.onnx();
    let (h, d) = (spec.hidden, spec.head_dim);
    let mut cx = Ctx {
        g,
        dtype: opts.dtype,
        reports: Vec::new(),
    };
    cx.g.input(
        "inputs_embeds",
        dt,
        &[graph::BATCH.into(), graph::SEQ.into(), h.into()],
    );
    graph::declare_kv_io(cx.g, dt, spec.layers, spec.kv_heads, d, spec.vocab);
    let (seqlens_k, total_len) = graph::sequence_lengths(cx.g);
    // Checkpoints that take images get bidirectional attention within each image's tokens.
    let gate = spec
        .image_token_id
        .map(|_| image_attn::gate(cx.g, &seqlens_k));

    // One rotary table pair per layer type that occurs.
    let tables = |cx: &mut Ctx, tag: &str, r: &Rope| -> Result<(String, String), Error> {
        let (cos, sin) = rope::caches(r, d, spec.context_length);
        let shape = vec![spec.context_length, d / 2];
        Ok((
            cx.weight(
                &format!("{tag}.cos_cache"),
                &Tensor::new(shape.clone(), cos),
            )?,
            cx.weight(&format!("{tag}.sin_cache"), &Tensor::new(shape, sin))?,
        ))
    };
    let has = |t: LayerType| spec.layer_types.contains(&t);
    let local = match has(LayerType::Sliding) {
        true => Some(tables(&mut cx, "rope_local", &spec.rope_local)?),
        false => None,
    };
    let global = match has(LayerType::Full) {
        true => Some(tables(&mut cx, "rope_global", &spec.rope_global)?),
        false => None,
    };

    let mut residual = "inputs_embeds".to_string();
    let mut pending: Option<String> = None; // last layer's output, not yet added to the residual
    let mut compaction = Vec::new();
    for i in 0..spec.layers {
        let (lw, c) = layer_weights(spec, names, src, i, opts.compact)?;
        compaction.extend(c);
        let p = format!("model.layers.{i}");
        let ln = cx.weight(&format!("{p}.input_layernorm.weight"), &lw.input_ln)?;
        let hidden = graph::input_norm(cx.g, &p, &mut residual, pending.take(), &ln, spec.eps);
        let rot = match spec.layer_types[i] {
            LayerType::Sliding => local.as_ref(),
            LayerType::Full => global.as_ref(),
        }
        .expect("a table exists for every layer type present");
        let ctx = AttnCtx {
            seqlens_k: &seqlens_k,
            total_len: &total_len,
            rot,
            gate: gate.as_ref(),
        };
        let attn = attention(&mut cx, spec, opts, &p, i, &hidden, &lw, &ctx)?;
        let o = cx.linear(
            &format!("{p}.self_attn.o_proj"),
            &attn,
            &lw.o,
            opts.policy.linear,
        )?;
        let post = cx.weight(
            &format!("{p}.post_attention_layernorm.weight"),
            &lw.post_attn_ln,
        )?;
        let o = graph::rms_norm(
            cx.g,
            &format!("/{p}/post_attention_layernorm/SimplifiedLayerNorm"),
            &o,
            &post,
            spec.eps,
        );
        let pre = cx.weight(
            &format!("{p}.pre_feedforward_layernorm.weight"),
            &lw.pre_ff_ln,
        )?;
        let (x, sum) = graph::skip_norm(
            cx.g,
            &format!("/{p}/pre_feedforward_layernorm/SkipLayerNorm"),
            &o,
            &residual,
            &pre,
            spec.eps,
        );
        residual = sum;
        let m = mlp(&mut cx, opts, &p, &x, &lw)?;
        let post_ff = cx.weight(
            &format!("{p}.post_feedforward_layernorm.weight"),
            &lw.post_ff_ln,
        )?;
        pending = Some(graph::rms_norm(
            cx.g,
            &format!("/{p}/post_feedforward_layernorm/SimplifiedLayerNorm"),
            &m,
            &post_ff,
            spec.eps,
        ));
    }

    let norm = src
        .get_shaped(&names.norm(), &[h])
        .map(super::weights::gemma_norm)?;
    let norm = cx.weight("model.norm.weight", &norm)?;
    let hidden = graph::final_norm(cx.g, pending, &residual, &norm, spec.eps)?;

    let head_name = match (&names.lm_head, spec.tied) {
        (Some(n), false) => n.clone(),
        _ => names.embed(),
    };
    let head = src.get_shaped(&head_name, &[spec.vocab, h])?;
    let mut embed_table = None;
    let logits = if opts.policy.lm_head == Scheme::None && head_name == names.embed() {
        let e = cx.weight(EMBED_WEIGHT, &head)?;
        embed_table = cx.g.external_ref(&e);
        graph::tied_head(cx.g, &hidden, &e)
    } else {
        cx.linear("lm_head", &hidden, &head, opts.policy.lm_head)?
    };
    drop(head);
    let logits = match spec.final_logit_softcapping {
        None => logits,
        Some(cap) => {
            // logits = cap · tanh(logits / cap), in the logits' dtype as transformers does.
            let c = cx.weight(
                "final_logit_softcapping",
                &Tensor::new(vec![], vec![cap as f32]),
            )?;
            let q = cx.g.op("/lm_head/softcap/Div", "Div", &[&logits, &c], &[]);
            let t = cx.g.op("/lm_head/softcap/Tanh", "Tanh", &[&q], &[]);
            cx.g.op("/lm_head/softcap/Mul", "Mul", &[&t, &c], &[])
        }
    };
    graph::logits_output(cx.g, &logits);

    let config = DecoderConfig {
        format_version: FORMAT_VERSION,
        graph: "decoder.onnx".into(),
        num_layers: spec.layers,
        num_heads: spec.heads,
        num_kv_heads: spec.kv_heads,
        head_dim: d,
        hidden_size: h,
        vocab_size: spec.vocab,
        context_length: spec.context_length,
        kv_dtype: opts.dtype.element_name().into(),
        io: DecoderIo {
            token_type_ids: gate.as_ref().map(|_| image_attn::INPUT.to_string()),
            ..graph::decoder_io(None, Some("inputs_embeds"))
        },
        tokens: SpecialTokens {
            bos_token_id: spec.bos_token_id,
            eos_token_ids: spec.eos_token_ids.clone(),
            pad_token_id: spec.pad_token_id,
        },
        embed: None,
        vision: None,
    };
    Ok(Built {
        config,
        reports: cx.reports,
        compaction,
        embed_table,
    })
}
