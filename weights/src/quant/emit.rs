//! Emits a quantised linear layer as graph nodes.
//!
//! ONNX Runtime's CPU MatMulNBits rejects float zero points at 8 bits ("only 2b and 4b
//! quantization is supported for unpacked compute"), so 8-bit HQQ is written exactly but
//! differently: since (q - z)·s = (q - 128)·s + (128 - z)·s, the layer becomes a zero-point-free
//! MatMulNBits plus a correction term: per block the sum of the input over that block, times
//! c[n, b] = (128 - z[n, b])·s[n, b]. The correction is one small MatMul ([.., K/B] @ [K/B, N]),
//! about 1/B of the main product's work, and runs on every execution provider.

use super::Quantized;
use crate::arch::Dtype;
use crate::checkpoint::Tensor;
use crate::onnx::{Attr, DataType, GraphBuilder, MS_DOMAIN};
use crate::Error;

/// `x @ deq(W)^T` for a quantised `W[N, K]`; weights are named `{name}.*`, nodes `/{name}/*`.
pub fn matmul_nbits(
    g: &mut GraphBuilder,
    name: &str,
    x: &str,
    q: &Quantized,
    dtype: Dtype,
) -> Result<String, Error> {
    let blob = q.block * q.bits as usize / 8;
    let b = g.weight(
        &format!("{name}.weight_Q{}", q.bits),
        DataType::Uint8,
        &[q.n, q.k_blocks, blob],
        &q.packed,
    )?;
    let s = g.weight(
        &format!("{name}.weight_scales"),
        dtype.onnx(),
        &[q.n * q.k_blocks],
        &dtype.encode(&q.scales),
    )?;
    let attrs = [
        ("K", Attr::Int(q.k as i64)),
        ("N", Attr::Int(q.n as i64)),
        ("bits", Attr::Int(q.bits as i64)),
        ("block_size", Attr::Int(q.block as i64)),
        // 0: compute in the input type (no int8 activations).
        ("accuracy_level", Attr::Int(0)),
    ];
    let node = format!("/{name}/MatMulNBits");
    match (&q.zero_points, q.bits) {
        (None, _) => Ok(g
            .node(&node, "MatMulNBits", MS_DOMAIN, &[x, &b, &s], 1, &attrs)
            .remove(0)),
        (Some(z), 4) => {
            let zp = g.weight(
                &format!("{name}.weight_zp"),
                dtype.onnx(),
                &[q.n * q.k_blocks],
                &dtype.encode(z),
            )?;
            Ok(g.node(
                &node,
                "MatMulNBits",
                MS_DOMAIN,
                &[x, &b, &s, &zp],
                1,
                &attrs,
            )
            .remove(0))
        }
        (Some(z), _) => {
            let y = g
                .node(&node, "MatMulNBits", MS_DOMAIN, &[x, &b, &s], 1, &attrs)
                .remove(0);
            let mid = (1u32 << (q.bits - 1)) as f32;
            // c^T laid out [k_blocks, N] for the correction MatMul.
            let mut ct = vec![0f32; q.k_blocks * q.n];
            for n in 0..q.n {
                for bk in 0..q.k_blocks {
                    let i = n * q.k_blocks + bk;
                    ct[bk * q.n + n] = (mid - z[i]) * q.scales[i];
                }
            }
            let ct = Tensor::new(vec![q.k_blocks, q.n], ct);
            let ct = g.weight(
                &format!("{name}.weight_zp_correction"),
                dtype.onnx(),
                &ct.shape,
                &dtype.encode(&ct.data),
            )?;
            let shape = g.const_i64(
                &format!("/{name}/zp/blocks_shape"),
                &[3],
                &[-1, q.k_blocks as i64, q.block as i64],
            );
            let axes = g.const_i64(&format!("/{name}/zp/axes"), &[1], &[2]);
            // K that is not a whole number of blocks: zero-pad the input like the weight was.
            let pad = q.k_blocks * q.block - q.k;
            let xb = if pad == 0 {
                x.to_string()
            } else {
                let flat = g.const_i64(&format!("/{name}/zp/flat_shape"), &[2], &[-1, q.k as i64]);
                let pads = g.const_i64(&format!("/{name}/zp/pads"), &[4], &[0, 0, 0, pad as i64]);
                let f = g.op(&format!("/{name}/zp/Flatten"), "Reshape", &[x, &flat], &[]);
                g.op(&format!("/{name}/zp/Pad"), "Pad", &[&f, &pads], &[])
            };
            let r = g.op(
                &format!("/{name}/zp/Reshape"),
                "Reshape",
                &[&xb, &shape],
                &[],
            );
            let sums = g.op(
                &format!("/{name}/zp/ReduceSum"),
                "ReduceSum",
                &[&r, &axes],
                &[("keepdims", Attr::Int(0))],
            );
            let corr = g.op(&format!("/{name}/zp/MatMul"), "MatMul", &[&sums, &ct], &[]);
            let yshape = g.op(&format!("/{name}/zp/Shape"), "Shape", &[&y], &[]);
            let corr = g.op(
                &format!("/{name}/zp/Reshape_out"),
                "Reshape",
                &[&corr, &yshape],
                &[],
            );
            Ok(g.op(&format!("/{name}/zp/Add"), "Add", &[&y, &corr], &[]))
        }
    }
}
