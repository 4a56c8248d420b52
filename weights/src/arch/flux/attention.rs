//! Joint attention over the concatenated [text; image] sequence: no mask, scale 1/√head_dim
//! (`F.scaled_dot_product_attention`'s default).

use super::ctx::Ctx;
use crate::arch::Dtype;
use crate::onnx::{Attr, DataType, MS_DOMAIN};
use crate::Error;

/// How the attention product is emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttentionKind {
    /// MatMul · Softmax · MatMul over [batch, heads, S, S] scores (softmax in float32 for half
    /// dtypes, as SDPA accumulates): standard ops every execution provider runs.
    #[default]
    Plain,
    /// com.microsoft MultiHeadAttention: flash/memory-efficient kernels on CUDA, but ONNX
    /// Runtime registers it for float and float16 only (no bf16 kernel).
    MultiHead,
    /// MultiHeadAttention in float16 whatever the compute dtype (q/k/v cast to float16 and the
    /// output back): the flash kernels for a bf16 graph. q/k are RMS-normalised, but v is not, so
    /// this assumes |v| stays below 65504.
    MultiHeadFp16,
    /// The standard `Attention` operator (opset 23; the graph then imports opset 23): registered
    /// on CUDA for float, float16 and bf16.
    Onnx23,
}

impl AttentionKind {
    pub fn name(self) -> &'static str {
        match self {
            AttentionKind::Plain => "plain",
            AttentionKind::MultiHead => "multi_head",
            AttentionKind::MultiHeadFp16 => "multi_head_fp16",
            AttentionKind::Onnx23 => "onnx23",
        }
    }

    /// The default-domain opset the graph must import.
    pub fn opset(self) -> i64 {
        match self {
            AttentionKind::Onnx23 => 23,
            _ => crate::onnx::ONNX_OPSET,
        }
    }
}

/// `q`, `k`, `v`: [batch, S, heads, head_dim] (q/k normalised and rotated). Returns
/// [batch, S, heads·head_dim].
pub(super) fn attention(
    cx: &mut Ctx,
    name: &str,
    (q, k, v): (&str, &str, &str),
    heads: usize,
    head_dim: usize,
    kind: AttentionKind,
) -> Result<String, Error> {
    let scale = 1.0 / (head_dim as f32).sqrt();
    match kind {
        AttentionKind::Onnx23 => {
            let flat: Vec<String> = [("q", q), ("k", k), ("v", v)]
                .iter()
                .map(|(n, x)| cx.reshape(&format!("{name}/{n}_flat"), x, &[0, 0, -1]))
                .collect();
            Ok(cx.op(
                &format!("{name}/Attention"),
                "Attention",
                &[&flat[0], &flat[1], &flat[2]],
                &[
                    ("q_num_heads", Attr::Int(heads as i64)),
                    ("kv_num_heads", Attr::Int(heads as i64)),
                    ("scale", Attr::Float(scale)),
                ],
            ))
        }
        AttentionKind::MultiHead | AttentionKind::MultiHeadFp16 => {
            let cast = kind == AttentionKind::MultiHeadFp16 && cx.dtype != Dtype::Fp16;
            let flat: Vec<String> = [("q", q), ("k", k), ("v", v)]
                .iter()
                .map(|(n, x)| {
                    let f = cx.reshape(&format!("{name}/{n}_flat"), x, &[0, 0, -1]);
                    if cast {
                        cx.cast(&format!("{name}/{n}_fp16"), &f, DataType::Float16)
                    } else {
                        f
                    }
                })
                .collect();
            let o = cx.g.node(
                &format!("{name}/MultiHeadAttention"),
                "MultiHeadAttention",
                MS_DOMAIN,
                &[&flat[0], &flat[1], &flat[2]],
                1,
                &[
                    ("num_heads", Attr::Int(heads as i64)),
                    ("scale", Attr::Float(scale)),
                ],
            );
            Ok(if cast {
                cx.cast(&format!("{name}/Cast_back"), &o[0], cx.dtype.onnx())
            } else {
                o[0].clone()
            })
        }
        AttentionKind::Plain => {
            let tr = |cx: &mut Ctx, n: &str, x: &str, perm: Vec<i64>| {
                cx.op(
                    &format!("{name}/Transpose_{n}"),
                    "Transpose",
                    &[x],
                    &[("perm", Attr::Ints(perm))],
                )
            };
            let qt = tr(cx, "q", q, vec![0, 2, 1, 3]);
            let kt = tr(cx, "k", k, vec![0, 2, 3, 1]);
            let vt = tr(cx, "v", v, vec![0, 2, 1, 3]);
            let scores = cx.op(&format!("{name}/MatMul_qk"), "MatMul", &[&qt, &kt], &[]);
            let half_type = cx.dtype != Dtype::Fp32;
            let scores = if half_type {
                cx.cast(&format!("{name}/Cast_scores"), &scores, DataType::Float)
            } else {
                scores
            };
            let s = cx.g.weight(
                &format!("{name}/scale"),
                DataType::Float,
                &[],
                &scale.to_le_bytes(),
            )?;
            let scaled = cx.op(&format!("{name}/Mul_scale"), "Mul", &[&scores, &s], &[]);
            let probs = cx.op(
                &format!("{name}/Softmax"),
                "Softmax",
                &[&scaled],
                &[("axis", Attr::Int(-1))],
            );
            let probs = if half_type {
                cx.cast(&format!("{name}/Cast_probs"), &probs, cx.dtype.onnx())
            } else {
                probs
            };
            let o = cx.op(&format!("{name}/MatMul_pv"), "MatMul", &[&probs, &vt], &[]);
            let o = tr(cx, "out", &o, vec![0, 2, 1, 3]);
            Ok(cx.reshape(&format!("{name}/merge"), &o, &[0, 0, -1]))
        }
    }
}
