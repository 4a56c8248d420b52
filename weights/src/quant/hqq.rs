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
        zero[g] = (-mn * s).round_ties_even();
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
                            let (acc, e_sum) = group_step(vals, s, rs, zz, qmax, beta);
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
            q[g * group + i] = quant_code(v * s + z, qmax) as u8;
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
#[inline]
fn shrink(x: f32, inv_beta: f32) -> f32 {
    let a = x.abs();
    let t = a - inv_beta * pow_approx(a + 1e-8, LP_NORM - 1.0);
    (t.max(0.0)).copysign(x)
}

/// One proximal step over a group: returns (sum of q - (w - w_e)·s, sum of |w - deq(w)|).
/// Runs in chunks of eight with per-lane sums so the compiler vectorises it (one ordered f32 sum
/// would not); every helper below is branch-free and inlined for the same reason.
#[inline]
fn group_step(vals: &[f32], s: f32, rs: f32, z: f32, qmax: f32, beta: f32) -> (f32, f32) {
    const L: usize = 8;
    let inv_beta = 1.0 / beta;
    let (mut acc, mut err) = ([0f32; L], [0f32; L]);
    let chunks = vals.chunks_exact(L);
    let rem = chunks.remainder();
    for c in chunks {
        let c: &[f32; L] = c.try_into().expect("chunk of L");
        for l in 0..L {
            let (a, e) = element_step(c[l], s, rs, z, qmax, inv_beta);
            acc[l] += a;
            err[l] += e;
        }
    }
    for &v in rem {
        let (a, e) = element_step(v, s, rs, z, qmax, inv_beta);
        acc[0] += a;
        err[0] += e;
    }
    (acc.iter().sum(), err.iter().sum())
}

#[inline(always)]
fn element_step(v: f32, s: f32, rs: f32, z: f32, qmax: f32, inv_beta: f32) -> (f32, f32) {
    let q = quant_code(v * s + z, qmax);
    let e = v - (q - z) * rs;
    (q - (v - shrink(e, inv_beta)) * s, e.abs())
}

/// round(x) clamped to [0, qmax], rounding half to even as torch.round does (the reference
/// rounds with it). Clamping first keeps |x| small, where the magic-number rounding is exact.
#[inline(always)]
fn quant_code(x: f32, qmax: f32) -> f32 {
    round_even(x.max(-1.0).min(qmax + 1.0)).max(0.0).min(qmax)
}

const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer (half to even)

/// Round half to even for |x| < 2^22 (branch-free, vectorises unlike a libm call).
#[inline(always)]
fn round_even(x: f32) -> f32 {
    (x + MAGIC) - MAGIC
}

/// x^p for x > 0 as 2^(p·log2 x) with polynomial log2/exp2 (relative error below 2e-5 for the
/// exponents used here, see the test). `powf` was 90% of HQQ's time and does not vectorise; the
/// threshold it feeds is a heuristic whose result does not depend on the 5th digit.
#[inline(always)]
fn pow_approx(x: f32, p: f32) -> f32 {
    exp2_approx(p * log2_approx(x))
}

#[inline(always)]
fn log2_approx(x: f32) -> f32 {
    let bits = x.to_bits();
    let e = ((bits >> 23) & 0xff) as i32 - 127;
    // Mantissa m in [1, 2); log2(m) = t·P(t), t = m - 1, P a degree-6 least-squares fit
    // (max abs error 7e-7).
    let m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    let t = m - 1.0;
    let p = 1.442_659_3
        + t * (-0.720_458_3
            + t * (0.472_893_4
                + t * (-0.324_294_9 + t * (0.192_307_1 + t * (-0.078_356_9 + t * 0.015_251_05)))));
    e as f32 + t * p
}

#[inline(always)]
fn exp2_approx(y: f32) -> f32 {
    let y = y.clamp(-125.0, 125.0);
    // Integer part by the rounding trick (its low mantissa bits are the integer), f in [-1/2, 1/2].
    let r = y + MAGIC;
    let i = r.to_bits() as i32 - MAGIC.to_bits() as i32;
    let f = y - (r - MAGIC);
    // 2^f by a degree-6 least-squares fit (max relative error 1e-8 before rounding).
    let p = 1.0
        + f * (std::f32::consts::LN_2
            + f * (0.240_226_5
                + f * (0.055_503_41 + f * (0.009_618_04 + f * (0.001_339_53 + f * 0.000_154_65)))));
    p * f32::from_bits(((i + 127) as u32) << 23)
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
