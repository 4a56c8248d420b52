//! Symmetric round-to-nearest, as ONNX Runtime's default weight-only quantiser does it: per block
//! the element of largest magnitude maps exactly to the most negative code (-2^(bits-1)), so the
//! scale carries its sign and no zero point is stored (the kernel assumes 2^(bits-1)).

use super::{pack, padded_rows, Quantized};
use crate::checkpoint::Tensor;

pub fn quantize(w: &Tensor, bits: u8, block: usize) -> Quantized {
    let (n, k) = (w.shape[0], w.shape[1]);
    let (k_blocks, k_pad) = padded_rows(w, block);
    let mut q = vec![0u8; n * k_pad];
    let mut scales = vec![0f32; n * k_blocks];
    // Rows are independent: split them over the cores.
    let threads = std::thread::available_parallelism()
        .map_or(1, |t| t.get())
        .min(n.max(1));
    let rows_per = n.div_ceil(threads).max(1);
    std::thread::scope(|sc| {
        for ((qc, sc_), rows) in q
            .chunks_mut(rows_per * k_pad)
            .zip(scales.chunks_mut(rows_per * k_blocks))
            .zip(w.data.chunks(rows_per * k))
        {
            sc.spawn(move || quantize_rows(rows, k, bits, block, k_blocks, k_pad, qc, sc_));
        }
    });
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

#[allow(clippy::too_many_arguments)]
fn quantize_rows(
    rows: &[f32],
    k: usize,
    bits: u8,
    block: usize,
    k_blocks: usize,
    k_pad: usize,
    q: &mut [u8],
    scales: &mut [f32],
) {
    let half = (1i32 << (bits - 1)) as f32;
    let qmax = ((1i32 << bits) - 1) as f32;
    for (r, row) in rows.chunks(k).enumerate() {
        for b in 0..k_blocks {
            let vals = &row[b * block..((b + 1) * block).min(k)];
            let m = vals
                .iter()
                .copied()
                .fold(0f32, |m, v| if v.abs() > m.abs() { v } else { m });
            let scale = m / -half;
            scales[r * k_blocks + b] = scale;
            let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
            let out = &mut q[r * k_pad + b * block..r * k_pad + (b + 1) * block];
            for (o, v) in out.iter_mut().zip(vals) {
                *o = ((v * inv).round() + half).clamp(0.0, qmax) as u8;
            }
            // Padding encodes zero.
            for o in &mut out[vals.len()..] {
                *o = half as u8;
            }
        }
    }
}
