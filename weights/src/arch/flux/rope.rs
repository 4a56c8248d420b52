//! FLUX's 3-axis RoPE, computed in the graph from the position ids (so the engine passes only the
//! ids), and its application to q/k.
//!
//! diffusers' `FluxPosEmbed`: per axis i with width d_i, frequencies 1/θ^(2j/d_i) in float64,
//! angles = pos_i · freq in float64, cos/sin cast to float32, each repeated twice (interleaved)
//! and the axes concatenated. Here the per-axis outer products are one float64 MatMul of the ids
//! [S, 3] with a block matrix M [3, head_dim/2] (M[i, j] = freq_j where column j belongs to axis i,
//! else 0), which gives the same angles exactly (one nonzero product per column). The repetition
//! is left implicit: q/k are viewed as pairs (x[2j], x[2j+1]) that share angle j.
//!
//! `apply_rotary_emb(use_real_unbind_dim=-1)` rotates each pair: (x0·cos − x1·sin, x1·cos + x0·sin),
//! in float32 (diffusers upcasts half-precision q/k for it and casts back): [`RopeKind::Exact`].
//! [`RopeKind::Fused`] does the same rotation with com.microsoft RotaryEmbedding (interleaved, one
//! kernel instead of ~12 elementwise passes over q and k), with the tables in the compute dtype.

use super::config::ROPE_THETA;
use super::ctx::Ctx;
use crate::arch::Dtype;
use crate::onnx::{Attr, DataType};
use crate::Error;

/// How q/k are rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RopeKind {
    /// Elementwise ops in float32, as diffusers computes it.
    #[default]
    Exact,
    /// com.microsoft RotaryEmbedding in the compute dtype (CPU: float32 and float16 kernels).
    Fused,
}

impl RopeKind {
    pub fn name(self) -> &'static str {
        match self {
            RopeKind::Exact => "exact",
            RopeKind::Fused => "fused",
        }
    }
}

pub(super) struct Rope {
    /// Exact: float32 [S, 1, head_dim/2, 1] (S = n_txt + n_img), broadcast over batch and heads.
    /// Fused: [S, head_dim/2] in the compute dtype (RotaryEmbedding's caches).
    pub cos: String,
    pub sin: String,
    /// Fused: int64 [1] = 0, so token s reads row s of the caches.
    pub start: Option<String>,
}

/// The block frequency matrix M [axes, head_dim/2] in float64, row-major.
pub fn frequency_matrix(axes_dims: &[usize]) -> Vec<f64> {
    let half: usize = axes_dims.iter().sum::<usize>() / 2;
    let mut m = vec![0f64; axes_dims.len() * half];
    let mut col = 0;
    for (i, &d) in axes_dims.iter().enumerate() {
        for j in 0..d / 2 {
            m[i * half + col] = 1.0 / ROPE_THETA.powf((2 * j) as f64 / d as f64);
            col += 1;
        }
    }
    m
}

pub(super) fn tables(
    cx: &mut Ctx,
    txt_ids: &str,
    img_ids: &str,
    axes_dims: &[usize],
    kind: RopeKind,
) -> Result<Rope, Error> {
    let half = axes_dims.iter().sum::<usize>() / 2;
    let p = "/pos_embed";
    let ids = cx.op(
        &format!("{p}/Concat"),
        "Concat",
        &[txt_ids, img_ids],
        &[("axis", Attr::Int(0))],
    );
    let ids64 = cx.cast(&format!("{p}/Cast_f64"), &ids, DataType::Double);
    let m = frequency_matrix(axes_dims);
    let bytes: Vec<u8> = m.iter().flat_map(|v| v.to_le_bytes()).collect();
    let m = cx.g.weight(
        "pos_embed.frequencies",
        DataType::Double,
        &[axes_dims.len(), half],
        &bytes,
    )?;
    let angles = cx.op(&format!("{p}/MatMul"), "MatMul", &[&ids64, &m], &[]);
    let mut out = Vec::new();
    for f in ["Cos", "Sin"] {
        let v = cx.op(&format!("{p}/{f}"), f, &[&angles], &[]);
        out.push(match kind {
            RopeKind::Exact => {
                let v = cx.cast(&format!("{p}/{f}/Cast_f32"), &v, DataType::Float);
                cx.reshape(&format!("{p}/{f}"), &v, &[-1, 1, half as i64, 1])
            }
            RopeKind::Fused => cx.cast(&format!("{p}/{f}/Cast_dtype"), &v, cx.dtype.onnx()),
        });
    }
    let sin = out.pop().expect("two tables");
    let cos = out.pop().expect("two tables");
    let start =
        (kind == RopeKind::Fused).then(|| cx.g.const_i64(&format!("{p}/start"), &[1], &[0]));
    Ok(Rope { cos, sin, start })
}

/// Rotates `x` [batch, S, heads, head_dim] (compute dtype) by the tables.
pub(super) fn apply(cx: &mut Ctx, name: &str, x: &str, rope: &Rope, heads: usize) -> String {
    if let Some(start) = &rope.start {
        let flat = cx.reshape(&format!("{name}/flat"), x, &[0, 0, -1]);
        let y = cx.g.node(
            &format!("{name}/RotaryEmbedding"),
            "RotaryEmbedding",
            crate::onnx::MS_DOMAIN,
            &[&flat, start, &rope.cos, &rope.sin],
            1,
            &[
                ("interleaved", Attr::Int(1)),
                ("num_heads", Attr::Int(heads as i64)),
            ],
        );
        return cx.reshape(&format!("{name}/heads"), &y[0], &[0, 0, heads as i64, -1]);
    }
    let half_type = cx.dtype != Dtype::Fp32;
    let x32 = if half_type {
        cx.cast(&format!("{name}/Cast_f32"), x, DataType::Float)
    } else {
        x.to_string()
    };
    let pairs = cx.reshape(&format!("{name}/pairs"), &x32, &[0, 0, 0, -1, 2]);
    let parts = cx.g.node(
        &format!("{name}/Split"),
        "Split",
        "",
        &[&pairs],
        2,
        &[("axis", Attr::Int(-1)), ("num_outputs", Attr::Int(2))],
    );
    let (x0, x1) = (&parts[0], &parts[1]);
    let mul = |cx: &mut Ctx, n: &str, a: &str, b: &str| {
        cx.op(&format!("{name}/Mul_{n}"), "Mul", &[a, b], &[])
    };
    let x0c = mul(cx, "x0c", x0, &rope.cos);
    let x1s = mul(cx, "x1s", x1, &rope.sin);
    let x1c = mul(cx, "x1c", x1, &rope.cos);
    let x0s = mul(cx, "x0s", x0, &rope.sin);
    let r0 = cx.op(&format!("{name}/Sub"), "Sub", &[&x0c, &x1s], &[]);
    let r1 = cx.op(&format!("{name}/Add"), "Add", &[&x1c, &x0s], &[]);
    let joined = cx.op(
        &format!("{name}/Concat"),
        "Concat",
        &[&r0, &r1],
        &[("axis", Attr::Int(-1))],
    );
    let y = cx.reshape(&format!("{name}/merge"), &joined, &[0, 0, 0, -1]);
    if half_type {
        cx.cast(&format!("{name}/Cast_back"), &y, cx.dtype.onnx())
    } else {
        y
    }
}
