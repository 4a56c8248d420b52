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
        zero[g] = round_even(-mn * s);
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
                            let rs = 1.0 / s;
                            let zz = *z;
                            let vals = &wp[g * group..(g + 1) * group];
                            let (mut acc, mut e_sum) = (0f32, 0f32);
                            for &v in vals {
                                let q = round_even(v * s + zz).clamp(0.0, qmax);
                                let e = v - (q - zz) * rs;
                                e_sum += e.abs();
                                let we = shrink(e, beta);
                                acc += q - (v - we) * s;
                            }
                            err += e_sum as f64;
                            *z = acc / group as f32;
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
            q[g * group + i] = round_even(v * s + z).clamp(0.0, qmax) as u8;
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
    let t = a - (1.0 / beta) * pow_approx(a + 1e-8, LP_NORM - 1.0);
    (t.max(0.0)).copysign(x)
}

/// Round half to even, as torch.round does (the reference rounds with it). The magic-number
/// form is exact for |x| < 2^22 and, unlike a libm call, vectorises; quantiser inputs are
/// bounded by the code range.
#[inline]
fn round_even(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    if x.abs() < 4_194_304.0 {
        (x + MAGIC) - MAGIC
    } else {
        x.round_ties_even()
    }
}

/// x^p for x > 0 as 2^(p·log2 x) with polynomial log2/exp2 (relative error below 2e-5 for the
/// exponents used here, see the test). `powf` was 90% of HQQ's time at 3B scale; the threshold it feeds is a heuristic whose
/// result does not depend on the 5th digit.
#[inline]
fn pow_approx(x: f32, p: f32) -> f32 {
    exp2_approx(p * log2_approx(x))
}

#[inline]
fn log2_approx(x: f32) -> f32 {
    let bits = x.to_bits();
    let e = ((bits >> 23) & 0xff) as i32 - 127;
    // Mantissa m in [1, 2); log2(m) = t·P(t), t = m - 1, P a degree-6 least-squares fit
    // (max abs error 7e-7).
    let m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    let t = m - 1.0;
    const C: [f32; 7] = [
        1.442_659_3,
        -0.720_458_3,
        0.472_893_4,
        -0.324_294_9,
        0.192_307_1,
        -0.078_356_9,
        0.015_251_05,
    ];
    let mut l = C[6];
    for c in C[..6].iter().rev() {
        l = l * t + c;
    }
    let l = l * t;
    e as f32 + l
}

#[inline]
fn exp2_approx(y: f32) -> f32 {
    let y = y.clamp(-126.0, 126.0);
    let i = y.floor();
    let f = y - i;
    // 2^f on [0, 1) by a degree-6 least-squares fit (max relative error 1e-8 before rounding).
    const D: [f32; 7] = [
        1.0,
        0.693_146_8,
        0.240_231_1,
        0.055_478_9,
        0.009_686_19,
        0.001_238_24,
        0.000_218_71,
    ];
    let mut p = D[6];
    for d in D[..6].iter().rev() {
        p = p * f + d;
    }
    p * f32::from_bits(((i as i32 + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pow_approx_is_close() {
        let mut x = 1e-8f32;
        while x < 1e4 {
            for p in [-0.3f32, 0.5, -1.0] {
                let (a, b) = (pow_approx(x, p), x.powf(p));
                assert!(((a - b) / b).abs() < 2e-5, "{x}^{p}: {a} vs {b}");
            }
            x *= 1.37;
        }
    }

    #[test]
    fn round_even_matches_torch() {
        for (x, want) in [
            (0.5f32, 0.0f32),
            (1.5, 2.0),
            (2.5, 2.0),
            (-0.5, -0.0),
            (-1.5, -2.0),
            (3.7, 4.0),
            (254.5, 254.0),
        ] {
            assert_eq!(round_even(x), want, "{x}");
        }
    }
}
