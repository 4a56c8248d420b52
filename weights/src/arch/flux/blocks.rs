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
    let img_mods = [
        format!("{a}.to_q"),
        format!("{a}.to_k"),
        format!("{a}.to_v"),
    ];
    let img_mods = img_mods.each_ref().map(String::as_str);
    let projected = projections(cx, sh, &n_img, &img_mods)?;
    let img_norms = [format!("{a}.norm_q"), format!("{a}.norm_k")];
    let [q, k, v] = to_heads(
        cx,
        sh,
        &projected,
        img_mods,
        img_norms.each_ref().map(String::as_str),
    )?;
    let txt_mods = [
        format!("{a}.add_q_proj"),
        format!("{a}.add_k_proj"),
        format!("{a}.add_v_proj"),
    ];
    let txt_mods = txt_mods.each_ref().map(String::as_str);
    let projected = projections(cx, sh, &n_txt, &txt_mods)?;
    let txt_norms = [format!("{a}.norm_added_q"), format!("{a}.norm_added_k")];
    let [eq, ek, ev] = to_heads(
        cx,
        sh,
        &projected,
        txt_mods,
        txt_norms.each_ref().map(String::as_str),
    )?;
    let q = concat(cx, &format!("/{a}/Concat_q"), &eq, &q, 1);
    let k = concat(cx, &format!("/{a}/Concat_k"), &ek, &k, 1);
    let v = concat(cx, &format!("/{a}/Concat_v"), &ev, &v, 1);
    let (heads, d) = (sh.cfg.num_attention_heads, sh.cfg.attention_head_dim);
    let q = rope::apply(cx, &format!("/{a}/rope_q"), &q, sh.rope, heads);
    let k = rope::apply(cx, &format!("/{a}/rope_k"), &k, sh.rope, heads);
    let o = attention(
        cx,
        &format!("/{a}/attention"),
        (&q, &k, &v),
        heads,
        d,
        sh.attention,
    )?;
    let o_txt = seq_slice(cx, &format!("/{a}/txt"), &o, None, Some(sh.n_txt));
    let o_img = seq_slice(cx, &format!("/{a}/img"), &o, Some(sh.n_txt), None);
    let o_img = cx.linear(&format!("{a}.to_out.0"), &o_img, sh.linear)?;
    let o_txt = cx.linear(&format!("{a}.to_add_out"), &o_txt, sh.linear)?;

    let img = gated_add(cx, &format!("/{p}/attn_img"), img, &m[2], &o_img);
    let n = cx.modulate(&format!("/{p}/norm2"), &img, h, &m[3], &m[4])?;
    let f = feed_forward(cx, sh, &format!("{p}.ff"), &n)?;
    let img = gated_add(cx, &format!("/{p}/ff_img"), &img, &m[5], &f);

    let txt = gated_add(cx, &format!("/{p}/attn_txt"), txt, &c[2], &o_txt);
    let n = cx.modulate(&format!("/{p}/norm2_context"), &txt, h, &c[3], &c[4])?;
    let f = feed_forward(cx, sh, &format!("{p}.ff_context"), &n)?;
    let txt = gated_add(cx, &format!("/{p}/ff_txt"), &txt, &c[5], &f);
    Ok((img, txt))
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
    let (heads, d) = (sh.cfg.num_attention_heads, sh.cfg.attention_head_dim);
    let q = rope::apply(cx, &format!("/{a}/rope_q"), &q, sh.rope, heads);
    let k = rope::apply(cx, &format!("/{a}/rope_k"), &k, sh.rope, heads);
    let o = attention(
        cx,
        &format!("/{a}/attention"),
        (&q, &k, &v),
        heads,
        d,
        sh.attention,
    )?;
    let joined = concat(cx, &format!("/{p}/Concat"), &o, &mlp, 2);
    let y = cx.linear(&format!("{p}.proj_out"), &joined, sh.linear)?;
    Ok(gated_add(cx, &format!("/{p}/out"), x, &m[2], &y))
}
