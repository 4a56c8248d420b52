//! One Gemma 3 decoder layer's attention and MLP (the graph around them is [`super::decoder`]).

use super::decoder::Options;
use super::weights::LayerWeights;
use super::{image_attn, Gemma3Spec, LayerType};
use crate::arch::graph::{self, Ctx, PAST_KEY, PAST_VALUE, PRESENT_KEY, PRESENT_VALUE};
use crate::checkpoint::Tensor;
use crate::format::DecoderIo;
use crate::onnx::{Attr, MS_DOMAIN};
use crate::Error;

/// What every layer's attention shares.
pub(super) struct AttnCtx<'a> {
    pub seqlens_k: &'a str,
    pub total_len: &'a str,
    /// The layer type's (cos, sin) tables.
    pub rot: &'a (String, String),
    pub gate: Option<&'a image_attn::Gate>,
}

/// q/k/v projection, per-head q/k RMSNorm, GroupQueryAttention (image-token queries recomputed
/// bidirectionally when the model takes images); returns the attention output.
#[allow(clippy::too_many_arguments)]
pub(super) fn attention(
    cx: &mut Ctx,
    spec: &Gemma3Spec,
    opts: &Options,
    p: &str,
    i: usize,
    x: &str,
    lw: &LayerWeights,
    a: &AttnCtx,
) -> Result<String, Error> {
    let (cos, sin) = a.rot;
    let (seqlens_k, total_len) = (a.seqlens_k, a.total_len);
    let d = spec.head_dim;
    let (q_out, kv_out) = (spec.heads * d, spec.kv_heads * d);
    let qkv = cx.linear(
        &format!("{p}.self_attn.qkv_proj"),
        x,
        &lw.qkv,
        opts.policy.linear,
    )?;
    let sizes = cx.g.const_i64(
        &format!("/{p}/attn/split_sizes"),
        &[3],
        &[q_out as i64, kv_out as i64, kv_out as i64],
    );
    let parts = cx.g.node(
        &format!("/{p}/attn/Split"),
        "Split",
        "",
        &[&qkv, &sizes],
        3,
        &[("axis", Attr::Int(-1))],
    );
    // RMSNorm over each head's head_dim values: [b, s, n·d] → [b, s, n, d] → norm → back.
    let heads_shape = cx.g.const_i64(
        &format!("/{p}/attn/heads_shape"),
        &[4],
        &[0, 0, -1, d as i64],
    );
    let flat_shape =
        cx.g.const_i64(&format!("/{p}/attn/flat_shape"), &[3], &[0, 0, -1]);
    let per_head = |cx: &mut Ctx, which: &str, t: &str, w: &Tensor| -> Result<String, Error> {
        let gamma = cx.weight(&format!("{p}.self_attn.{which}.weight"), w)?;
        let r = cx.g.op(
            &format!("/{p}/attn/{which}/Reshape"),
            "Reshape",
            &[t, &heads_shape],
            &[],
        );
        let n = graph::rms_norm(
            cx.g,
            &format!("/{p}/attn/{which}/SimplifiedLayerNorm"),
            &r,
            &gamma,
            spec.eps,
        );
        Ok(cx.g.op(
            &format!("/{p}/attn/{which}/Reshape_back"),
            "Reshape",
            &[&n, &flat_shape],
            &[],
        ))
    };
    let q = per_head(cx, "q_norm", &parts[0], &lw.q_norm)?;
    let k = per_head(cx, "k_norm", &parts[1], &lw.k_norm)?;
    let past_k = DecoderIo::layer(PAST_KEY, i);
    let past_v = DecoderIo::layer(PAST_VALUE, i);
    let mut attrs = vec![
        ("num_heads", Attr::Int(spec.heads as i64)),
        ("kv_num_heads", Attr::Int(spec.kv_heads as i64)),
        (
            "scale",
            Attr::Float(spec.query_pre_attn_scalar.powf(-0.5) as f32),
        ),
        ("do_rotary", Attr::Int(1)),
        ("rotary_interleaved", Attr::Int(0)),
    ];
    if spec.layer_types[i] == LayerType::Sliding {
        attrs.push(("local_window_size", Attr::Int(spec.sliding_window as i64)));
    }
    let out = format!("/{p}/attn/GroupQueryAttention/output_0");
    let (present_k, present_v) = (
        DecoderIo::layer(PRESENT_KEY, i),
        DecoderIo::layer(PRESENT_VALUE, i),
    );
    cx.g.node_with(
        &format!("/{p}/attn/GroupQueryAttention"),
        "GroupQueryAttention",
        MS_DOMAIN,
        &[
            &q, &k, &parts[2], &past_k, &past_v, seqlens_k, total_len, cos, sin,
        ],
        &[out.clone(), present_k.clone(), present_v.clone()],
        &attrs,
    );
    Ok(match a.gate {
        None => out,
        Some(m) => image_attn::merge(
            cx,
            spec,
            p,
            spec.layer_types[i],
            m,
            &q,
            a.rot,
            (&present_k, &present_v),
            &out,
        ),
    })
}

/// `down(gelu_tanh(gate·x) ⊙ up·x)` with gate and up as one matmul.
pub(super) fn mlp(
    cx: &mut Ctx,
    opts: &Options,
    p: &str,
    x: &str,
    lw: &LayerWeights,
) -> Result<String, Error> {
    cx.gated_mlp(
        p,
        x,
        &lw.gate_up,
        &lw.down,
        opts.policy.linear,
        |g, gate| {
            g.node(
                &format!("/{p}/mlp/act/FastGelu"),
                "FastGelu",
                MS_DOMAIN,
                &[gate],
                1,
                &[],
            )
            .remove(0)
        },
    )
}
