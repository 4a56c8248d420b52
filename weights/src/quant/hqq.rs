//! Half-Quadratic Quantization (Badri & Shaji, 2023) with float zero points, following the
//! procedure of ONNX Runtime's `HQQWeightOnlyQuantizer`: per group of `group` consecutive input
//! features, start from min/max scale and a rounded zero point, then refine the zero point by
//! alternating a proximal l_p shrinkage (p = 0.7) of the quantisation residual with a closed-form
//! zero update; stop when the mean absolute error stops improving. The scale stays fixed.
//!
//! Rows are processed in parallel; the stopping rule uses the error over the whole tensor, as the
//! reference does, so the result does not depend on the thread count.

use super::{pack, padded_rows, Quantized};
use crate::checkpoint::Tensor;

const LP_NORM: f32 = 0.7;
const BETA0: f32 = 10.0;
const KAPPA: f32 = 1.01;
const ITERS: usize = 20;

pub fn quantize(w: &Tensor, bits: u8, group: usize) -> Quantized {
    quantize_with(w, bits, group, ITERS)
}

/// [`quantize`] with a given iteration budget (0: plain min/max with a rounded zero point).
pub fn quantize_with(w: &Tensor, bits: u8, group: usize, iters: usize) -> Quantized {
    let (n, k) = (w.shape[0], w.shape[1]);
    let (k_blocks, k_pad) = padded_rows(w, group);
    let qmax = ((1u32 << bits) - 1) as f32;
    // Groups of the zero-padded weight, as the reference pads before grouping.
    let mut wp = vec![0f32; n * k_pad];
    for r in 0..n {
        wp[r * k_pad..r * k_pad + k].copy_from_slice(&w.data[r * k..(r + 1) * k]);
    }
    let groups = n * k_blocks;
    // `inv_scale` multiplies (quantise: round(w * inv_scale + zero)); the stored scale is 1/inv.
    let mut inv_scale = vec![0f32; groups];
    let mut zero = vec![0f32; groups];
    for g in 0..groups {
        let vals = &wp[g * group..(g + 1) * group];
        let (mn, mx) = vals
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        let range = if mx - mn == 0.0 { qmax } else { mx - mn };
        let s = (qmax / range).min(2e4);
        inv_scale[g] = s;
        zero[g] = (-mn * s).round();
    }

    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(groups.max(1));
    let chunk = groups.div_ceil(threads).max(1);
    let mut best = f32::INFINITY;
    let mut beta = BETA0;
    for _ in 0..iters {
        // One proximal step on every group; returns the sum of |w - deq(w)| before the update.
        let mut err_sum = 0f64;
        std::thread::scope(|sc| {
            let handles: Vec<_> = zero
                .chunks_mut(chunk)
                .enumerate()
                .map(|(ci, zs)| {
                    let wp = &wp;
                    let inv_scale = &inv_scale;
                    sc.spawn(move || {
                        let mut err = 0f64;
                        for (j, z) in zs.iter_mut().enumerate() {
                            let g = ci * chunk + j;
                            let s = inv_scale[g];
                            let vals = &wp[g * group..(g + 1) * group];
                            let mut acc = 0f64;
                            for &v in vals {
                                let q = (v * s + *z).round().clamp(0.0, qmax);
                                let r = (q - *z) / s;
                                let e = v - r;
                                err += e.abs() as f64;
                                let we = shrink(e, beta);
                                acc += (q - (v - we) * s) as f64;
                            }
                            *z = (acc / group as f64) as f32;
                        }
                        err
                    })
                })
                .collect();
            for h in handles {
                err_sum += h.join().expect("hqq worker panicked");
            }
        });
        beta *= KAPPA;
        let err = (err_sum / (n * k_pad) as f64) as f32;
        if err < best {
            best = err;
        } else {
            break;
        }
    }

    let mut q = vec![0u8; n * k_pad];
    for g in 0..groups {
        let (s, z) = (inv_scale[g], zero[g]);
        for (i, &v) in wp[g * group..(g + 1) * group].iter().enumerate() {
            q[g * group + i] = (v * s + z).round().clamp(0.0, qmax) as u8;
        }
    }
    Quantized {
        bits,
        block: group,
        n,
        k,
        k_blocks,
        packed: pack(&q, bits),
        scales: inv_scale.iter().map(|s| 1.0 / s).collect(),
        zero_points: Some(zero),
    }
}

/// Generalised soft-thresholding for the l_p norm (p < 1).
fn shrink(x: f32, beta: f32) -> f32 {
    let a = x.abs();
    let t = a - (1.0 / beta) * (a + 1e-8).powf(LP_NORM - 1.0);
    x.signum() * t.max(0.0)
}
