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

use super::weights::layer_weights;
use super::{rope, DecoderSpec, Dtype};
use crate::checkpoint::{Tensor, TensorSource};
use crate::format::{DecoderConfig, DecoderIo, SpecialTokens, FORMAT_VERSION};
use crate::onnx::{Attr, DataType, Dim, GraphBuilder, MS_DOMAIN};
use crate::quant::{self, Policy, Scheme, TensorReport};
use crate::Error;

pub const PAST_KEY: &str = "past_key_values.{i}.key";
pub const PAST_VALUE: &str = "past_key_values.{i}.value";
pub const PRESENT_KEY: &str = "present.{i}.key";
pub const PRESENT_VALUE: &str = "present.{i}.value";

pub struct Options {
    pub dtype: Dtype,
    pub policy: Policy,
}

struct Ctx<'a> {
    g: &'a mut GraphBuilder,
    dtype: Dtype,
    reports: Vec<TensorReport>,
}

impl Ctx<'_> {
    fn weight(&mut self, name: &str, t: &Tensor) -> Result<String, Error> {
        self.g.weight(
            name,
            self.dtype.onnx(),
            &t.shape,
            &self.dtype.encode(&t.data),
        )
    }

    /// `x @ W^T` for `W[N, K]`, either as MatMul on the transposed weight or as MatMulNBits.
    fn linear(&mut self, name: &str, x: &str, w: &Tensor, scheme: Scheme) -> Result<String, Error> {
        match quant::quantize(w, scheme) {
            None => {
                let wt = self.weight(&format!("{name}.weight"), &w.transpose2())?;
                Ok(self
                    .g
                    .op(&format!("/{name}/MatMul"), "MatMul", &[x, &wt], &[]))
            }
            Some(q) => {
                self.reports.push(quant::report(name, scheme, w, &q));
                quant::emit::matmul_nbits(self.g, name, x, &q, self.dtype)
            }
        }
    }
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
    let (b, s, past, total) = (
        "batch_size",
        "sequence_length",
        "past_sequence_length",
        "total_sequence_length",
    );
    cx.g.input("input_ids", DataType::Int64, &[b.into(), s.into()]);
    cx.g.input("attention_mask", DataType::Int64, &[b.into(), total.into()]);
    for i in 0..spec.layers {
        for t in [PAST_KEY, PAST_VALUE] {
            let dims: [Dim; 4] = [b.into(), kvh.into(), past.into(), d.into()];
            cx.g.input(&crate::format::DecoderIo::layer(t, i), dt, &dims);
        }
    }
    cx.g.output("logits", dt, &[b.into(), s.into(), spec.vocab.into()]);
    for i in 0..spec.layers {
        for t in [PRESENT_KEY, PRESENT_VALUE] {
            let dims: [Dim; 4] = [b.into(), kvh.into(), total.into(), d.into()];
            cx.g.output(&crate::format::DecoderIo::layer(t, i), dt, &dims);
        }
    }

    // Sequence lengths from the mask, as GroupQueryAttention wants them (int32).
    let axes = cx.g.const_i64("/model/constants/axes_1", &[1], &[1]);
    let one = cx.g.const_i64("/model/constants/one", &[], &[1]);
    let sum = cx.g.op(
        "/model/attn_mask/ReduceSum",
        "ReduceSum",
        &["attention_mask", &axes],
        &[("keepdims", Attr::Int(0))],
    );
    let sub = cx.g.op("/model/attn_mask/Sub", "Sub", &[&sum, &one], &[]);
    let seqlens_k = cx.g.op(
        "/model/attn_mask/seqlens_k",
        "Cast",
        &[&sub],
        &[("to", Attr::Int(DataType::Int32 as i64))],
    );
    let shape =
        cx.g.op("/model/attn_mask/Shape", "Shape", &["attention_mask"], &[]);
    let tot = cx.g.op(
        "/model/attn_mask/Gather",
        "Gather",
        &[&shape, &one],
        &[("axis", Attr::Int(0))],
    );
    let total_len = cx.g.op(
        "/model/attn_mask/total_seq_len",
        "Cast",
        &[&tot],
        &[("to", Attr::Int(DataType::Int32 as i64))],
    );

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

    let norm_attrs = |eps: f32| vec![("epsilon", Attr::Float(eps))];
    let mut pending: Option<String> = None; // the last block's output, not yet added to residual
    for i in 0..spec.layers {
        let lw = layer_weights(spec, src, i)?;
        let p = format!("model.layers.{i}");
        let ln1 = cx.weight(&format!("{p}.input_layernorm.weight"), &lw.ln1)?;
        let hidden = match pending.take() {
            None => cx.g.op(
                &format!("/{p}/input_layernorm/SimplifiedLayerNorm"),
                "SimplifiedLayerNormalization",
                &[&residual, &ln1],
                &[
                    ("axis", Attr::Int(-1)),
                    ("epsilon", Attr::Float(spec.eps)),
                    ("stash_type", Attr::Int(1)),
                ],
            ),
            Some(prev) => {
                let outs = skip_norm(
                    cx.g,
                    &format!("/{p}/input_layernorm/SkipLayerNorm"),
                    &prev,
                    &residual,
                    &ln1,
                    &norm_attrs(spec.eps),
                );
                residual = outs.1;
                outs.0
            }
        };

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
        let (hidden2, res2) = skip_norm(
            cx.g,
            &format!("/{p}/post_attention_layernorm/SkipLayerNorm"),
            &o,
            &residual,
            &ln2,
            &norm_attrs(spec.eps),
        );
        residual = res2;
        let gu = cx.linear(
            &format!("{p}.mlp.gate_up_proj"),
            &hidden2,
            &lw.gate_up,
            opts.policy.linear,
        )?;
        let parts = cx.g.node(
            &format!("/{p}/mlp/Split"),
            "Split",
            "",
            &[&gu],
            2,
            &[("axis", Attr::Int(-1)), ("num_outputs", Attr::Int(2))],
        );
        let sig = cx.g.op(
            &format!("/{p}/mlp/act/Sigmoid"),
            "Sigmoid",
            &[&parts[0]],
            &[],
        );
        let act =
            cx.g.op(&format!("/{p}/mlp/act/Mul"), "Mul", &[&parts[0], &sig], &[]);
        let prod =
            cx.g.op(&format!("/{p}/mlp/Mul"), "Mul", &[&act, &parts[1]], &[]);
        pending = Some(cx.linear(
            &format!("{p}.mlp.down_proj"),
            &prod,
            &lw.down,
            opts.policy.linear,
        )?);
    }

    let norm = src.get_shaped("model.norm.weight", &[h])?;
    let norm = cx.weight("model.norm.weight", &norm)?;
    let last = pending.ok_or_else(|| Error::Unsupported("a decoder with zero layers".into()))?;
    let (hidden, _) = skip_norm(
        cx.g,
        "/model/norm/SkipLayerNorm",
        &last,
        &residual,
        &norm,
        &norm_attrs(spec.eps),
    );

    let logits_tmp = match (&tied_embed, opts.policy.lm_head) {
        // Tied and unquantised: reuse the embedding initializer; ORT folds the transpose once.
        (None, Scheme::None) if tied => {
            let t = cx.g.op(
                "/lm_head/Transpose",
                "Transpose",
                &[&embed_name],
                &[("perm", Attr::Ints(vec![1, 0]))],
            );
            cx.g.op("/lm_head/MatMul", "MatMul", &[&hidden, &t], &[])
        }
        (Some(e), scheme) => cx.linear("lm_head", &hidden, e, scheme)?,
        (None, scheme) => {
            let w = src.get_shaped("lm_head.weight", &[spec.vocab, h])?;
            cx.linear("lm_head", &hidden, &w, scheme)?
        }
    };
    cx.g.node_with(
        "/lm_head/Identity",
        "Identity",
        "",
        &[&logits_tmp],
        &["logits".to_string()],
        &[],
    );

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
        io: DecoderIo {
            input_ids: Some("input_ids".into()),
            inputs_embeds: None,
            attention_mask: "attention_mask".into(),
            past_key: PAST_KEY.into(),
            past_value: PAST_VALUE.into(),
            present_key: PRESENT_KEY.into(),
            present_value: PRESENT_VALUE.into(),
            logits: "logits".into(),
            shared_kv_buffer: true,
        },
        tokens: SpecialTokens {
            bos_token_id: spec.bos_token_id,
            eos_token_ids: spec.eos_token_ids.clone(),
            pad_token_id: spec.pad_token_id,
        },
    };
    Ok((config, cx.reports))
}

/// SkipSimplifiedLayerNormalization: returns (normalised, input + skip).
fn skip_norm(
    g: &mut GraphBuilder,
    name: &str,
    input: &str,
    skip: &str,
    gamma: &str,
    attrs: &[(&str, Attr)],
) -> (String, String) {
    let out = format!("{name}/output_0");
    let sum = format!("{name}/output_3");
    g.node_with(
        name,
        "SkipSimplifiedLayerNormalization",
        MS_DOMAIN,
        &[input, skip, gamma],
        &[out.clone(), String::new(), String::new(), sum.clone()],
        attrs,
    );
    (out, sum)
}
