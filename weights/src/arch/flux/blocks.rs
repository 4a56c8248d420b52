//! The double-stream (`FluxTransformerBlock`) and single-stream (`FluxSingleTransformerBlock`)
//! blocks. Single blocks run on the joint [text; image] sequence, which stays joined from the
//! first single block to the end (diffusers splits and re-joins it around every block; the values
//! are the same).

use super::attention::{attention, AttentionKind};
use super::config::FluxConfig;
use super::ctx::Ctx;
use super::rope::{self, Rope};
use crate::onnx::Attr;
use crate::quant::Scheme;
use crate::Error;

/// What every block needs besides its own weights.
pub(super) struct Shared<'s> {
    pub cfg: &'s FluxConfig,
    /// SiLU(temb) [batch, hidden]: the input of every adaLN linear.
    pub silu_temb: &'s str,
    pub rope: &'s Rope,
    /// [1] int64: the number of text tokens, where the joint sequence splits.
    pub n_txt: &'s str,
    pub attention: AttentionKind,
    /// Scheme of the attention/MLP linears, and of the adaLN modulation linears.
    pub linear: Scheme,
    pub modulation: Scheme,
    /// Linears that read the same input run as one product (see linear.rs).
    pub fuse: bool,
}

impl Shared<'_> {
    fn split_dims(&self) -> [i64; 4] {
        [
            0,
            0,
            self.cfg.num_attention_heads as i64,
            self.cfg.attention_head_dim as i64,
        ]
    }
}

/// The outputs of `modules` for the same input `x`, fused into one product when `sh.fuse`.
fn projections(cx: &mut Ctx, sh: &Shared, x: &str, modules: &[&str]) -> Result<Vec<String>, Error> {
    if sh.fuse {
        cx.linears(modules, x, sh.linear)
    } else {
        modules.iter().map(|m| cx.linear(m, x, sh.linear)).collect()
    }
}

/// q/k/v projection outputs reshaped to [batch, S, heads, head_dim], q and k normalised.
fn to_heads(
    cx: &mut Ctx,
    sh: &Shared,
    projected: &[String],
    [q, k, v]: [&str; 3],
    [nq, nk]: [&str; 2],
) -> Result<[String; 3], Error> {
    let dims = sh.split_dims();
    let d = sh.cfg.attention_head_dim;
    let mut out = Vec::with_capacity(3);
    for (y, (m, norm)) in projected
        .iter()
        .zip([(q, Some(nq)), (k, Some(nk)), (v, None)])
    {
        let y = cx.reshape(&format!("/{m}/heads"), y, &dims);
        out.push(match norm {
            Some(n) => cx.rms_norm(n, &y, d)?,
            None => y,
        });
    }
    Ok([out[0].clone(), out[1].clone(), out[2].clone()])
}

fn concat(cx: &mut Ctx, name: &str, a: &str, b: &str, axis: i64) -> String {
    cx.op(name, "Concat", &[a, b], &[("axis", Attr::Int(axis))])
}

/// Tokens [from, to) of the sequence axis (1); `None` bounds are the ends.
pub(super) fn seq_slice(
    cx: &mut Ctx,
    name: &str,
    x: &str,
    from: Option<&str>,
    to: Option<&str>,
) -> String {
    let from = match from {
        Some(f) => f.to_string(),
        None => cx.g.const_i64(&format!("{name}/zero"), &[1], &[0]),
    };
    let to = match to {
        Some(t) => t.to_string(),
        None => cx.g.const_i64(&format!("{name}/end"), &[1], &[i64::MAX]),
    };
    let axes = cx.g.const_i64(&format!("{name}/axes"), &[1], &[1]);
    cx.op(
        &format!("{name}/Slice"),
        "Slice",
        &[x, &from, &to, &axes],
        &[],
    )
}

fn gated_add(cx: &mut Ctx, name: &str, residual: &str, gate: &str, y: &str) -> String {
    let g = cx.op(&format!("{name}/Mul_gate"), "Mul", &[gate, y], &[]);
    cx.op(&format!("{name}/Add_residual"), "Add", &[residual, &g], &[])
}

/// FeedForward(gelu-approximate): net.0.proj → GELU(tanh) → net.2.
fn feed_forward(cx: &mut Ctx, sh: &Shared, module: &str, x: &str) -> Result<String, Error> {
    let h = cx.linear(&format!("{module}.net.0.proj"), x, sh.linear)?;
    let h = cx.gelu_tanh(&format!("/{module}/act"), &h);
    cx.linear(&format!("{module}.net.2"), &h, sh.linear)
}

/// One double-stream block; returns (image, text) hidden states.
pub(super) fn double(
    cx: &mut Ctx,
    sh: &Shared,
    i: usize,
    img: &str,
    txt: &str,
) -> Result<(String, String), Error> {
    let p = format!("transformer_blocks.{i}");
    let h = sh.cfg.hidden();
    let m = cx.linear(&format!("{p}.norm1.linear"), sh.silu_temb, sh.modulation)?;
    let m = cx.chunks(&format!("/{p}/norm1"), &m, 6);
    let c = cx.linear(
        &format!("{p}.norm1_context.linear"),
        sh.silu_temb,
        sh.modulation,
    )?;
    let c = cx.chunks(&format!("/{p}/norm1_context"), &c, 6);
    // chunks: shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp
    let n_img = cx.modulate(&format!("/{p}/norm1"), img, h, &m[0], &m[1])?;
    let n_txt = cx.modulate(&format!("/{p}/norm1_context"), txt, h, &c[0], &c[1])?;

    let a = format!("{p}.attn");
    let [q, k, v] = stream_qkv(
        cx,
        sh,
        &n_img,
        &a,
        ["to_q", "to_k", "to_v"],
        ["norm_q", "norm_k"],
    )?;
    let [eq, ek, ev] = stream_qkv(
        cx,
        sh,
        &n_txt,
        &a,
        ["add_q_proj", "add_k_proj", "add_v_proj"],
        ["norm_added_q", "norm_added_k"],
    )?;
    let q = concat(cx, &format!("/{a}/Concat_q"), &eq, &q, 1);
    let k = concat(cx, &format!("/{a}/Concat_k"), &ek, &k, 1);
    let v = concat(cx, &format!("/{a}/Concat_v"), &ev, &v, 1);
    let o = rope_attention(cx, sh, &a, &q, &k, &v)?;
    let o_txt = seq_slice(cx, &format!("/{a}/txt"), &o, None, Some(sh.n_txt));
    let o_img = seq_slice(cx, &format!("/{a}/img"), &o, Some(sh.n_txt), None);
    let o_img = cx.linear(&format!("{a}.to_out.0"), &o_img, sh.linear)?;
    let o_txt = cx.linear(&format!("{a}.to_add_out"), &o_txt, sh.linear)?;

    let img = stream_tail(cx, sh, &p, img, &o_img, &m, ("img", "norm2", "ff"))?;
    let txt = stream_tail(
        cx,
        sh,
        &p,
        txt,
        &o_txt,
        &c,
        ("txt", "norm2_context", "ff_context"),
    )?;
    Ok((img, txt))
}

/// One stream's q, k, v in heads: the projections `{a}.{mods}` of `x`, then the per-head
/// RMSNorms `{a}.{norms}` on q and k (the image and text streams differ only in module names).
fn stream_qkv(
    cx: &mut Ctx,
    sh: &Shared,
    x: &str,
    a: &str,
    mods: [&str; 3],
    norms: [&str; 2],
) -> Result<[String; 3], Error> {
    let mods = mods.map(|m| format!("{a}.{m}"));
    let mods = mods.each_ref().map(String::as_str);
    let norms = norms.map(|m| format!("{a}.{m}"));
    let projected = projections(cx, sh, x, &mods)?;
    to_heads(
        cx,
        sh,
        &projected,
        mods,
        norms.each_ref().map(String::as_str),
    )
}

/// RoPE on q and k, then attention over the joint sequence (double and single blocks alike).
fn rope_attention(
    cx: &mut Ctx,
    sh: &Shared,
    a: &str,
    q: &str,
    k: &str,
    v: &str,
) -> Result<String, Error> {
    let (heads, d) = (sh.cfg.num_attention_heads, sh.cfg.attention_head_dim);
    let q = rope::apply(cx, &format!("/{a}/rope_q"), q, sh.rope, heads);
    let k = rope::apply(cx, &format!("/{a}/rope_k"), k, sh.rope, heads);
    attention(
        cx,
        &format!("/{a}/attention"),
        (&q, &k, v),
        heads,
        d,
        sh.attention,
    )
}

/// A double block's stream after attention: gated residual of the attention output `o`,
/// modulated norm, feed-forward, gated residual. `m`: the stream's six modulation chunks;
/// `(s, norm, ff)`: its names, ("img", "norm2", "ff") or ("txt", "norm2_context", "ff_context").
#[allow(clippy::too_many_arguments)]
fn stream_tail(
    cx: &mut Ctx,
    sh: &Shared,
    p: &str,
    x: &str,
    o: &str,
    m: &[String],
    (s, norm, ff): (&str, &str, &str),
) -> Result<String, Error> {
    let x = gated_add(cx, &format!("/{p}/attn_{s}"), x, &m[2], o);
    let n = cx.modulate(&format!("/{p}/{norm}"), &x, sh.cfg.hidden(), &m[3], &m[4])?;
    let f = feed_forward(cx, sh, &format!("{p}.{ff}"), &n)?;
    Ok(gated_add(cx, &format!("/{p}/ff_{s}"), &x, &m[5], &f))
}

/// One single-stream block on the joint sequence `x` [batch, n_txt + n_img, hidden].
pub(super) fn single(cx: &mut Ctx, sh: &Shared, i: usize, x: &str) -> Result<String, Error> {
    let p = format!("single_transformer_blocks.{i}");
    let h = sh.cfg.hidden();
    let m = cx.linear(&format!("{p}.norm.linear"), sh.silu_temb, sh.modulation)?;
    // chunks: shift, scale, gate
    let m = cx.chunks(&format!("/{p}/norm"), &m, 3);
    let n = cx.modulate(&format!("/{p}/norm"), x, h, &m[0], &m[1])?;
    let a = format!("{p}.attn");
    let mods = [
        format!("{a}.to_q"),
        format!("{a}.to_k"),
        format!("{a}.to_v"),
        format!("{p}.proj_mlp"),
    ];
    let mods = mods.each_ref().map(String::as_str);
    let projected = projections(cx, sh, &n, &mods)?;
    let mlp = cx.gelu_tanh(&format!("/{p}/act_mlp"), &projected[3]);
    let norms = [format!("{a}.norm_q"), format!("{a}.norm_k")];
    let qkv_mods = [mods[0], mods[1], mods[2]];
    let [q, k, v] = to_heads(
        cx,
        sh,
        &projected[..3],
        qkv_mods,
        norms.each_ref().map(String::as_str),
    )?;
    let o = rope_attention(cx, sh, &a, &q, &k, &v)?;
    let joined = concat(cx, &format!("/{p}/Concat"), &o, &mlp, 2);
    let y = cx.linear(&format!("{p}.proj_out"), &joined, sh.linear)?;
    Ok(gated_add(cx, &format!("/{p}/out"), x, &m[2], &y))
}
