//! Symmetric round-to-nearest, as ONNX Runtime's default weight-only quantiser does it: per block
//! the element of largest magnitude maps exactly to the most negative code (-2^(bits-1)), so the
//! scale carries its sign and no zero point is stored (the kernel assumes 2^(bits-1)).

use super::{pack, padded_rows, Quantized};
use crate::checkpoint::Tensor;

pub fn quantize(w: &Tensor, bits: u8, block: usize) -> Quantized {
    let (n, k) = (w.shape[0], w.shape[1]);
    let (k_blocks, k_pad) = padded_rows(w, block);
    let half = (1i32 << (bits - 1)) as f32;
    let qmax = ((1i32 << bits) - 1) as f32;
    let mut q = vec![0u8; n * k_pad];
    let mut scales = vec![0f32; n * k_blocks];
    for r in 0..n {
        let row = &w.data[r * k..(r + 1) * k];
        for b in 0..k_blocks {
            let vals = &row[b * block..((b + 1) * block).min(k)];
            let m = vals
                .iter()
                .copied()
                .fold(0f32, |m, v| if v.abs() > m.abs() { v } else { m });
            let scale = m / -half;
            scales[r * k_blocks + b] = scale;
            let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
            for (i, v) in vals.iter().enumerate() {
                q[r * k_pad + b * block + i] = ((v * inv).round() + half).clamp(0.0, qmax) as u8;
            }
            // Padding encodes zero.
            for i in vals.len()..block {
                q[r * k_pad + b * block + i] = half as u8;
            }
        }
    }
    Quantized {
        bits,
        block,
        n,
        k,
        k_blocks,
        packed: pack(&q, bits),
        scales,
        zero_points: None,
    }
}
