//! Rotary embedding tables for GroupQueryAttention's `cos_cache`/`sin_cache` ([positions,
//! head_dim/2], non-interleaved halves as in transformers' `rotate_half`).
//!
//! Computed in f32 the way transformers does (inverse frequencies as f32 powers, then f32
//! products), so fp32 graphs match its logits to rounding.

use super::{Rope, RopeScaling};

pub fn inv_freq(rope: &Rope, head_dim: usize) -> Vec<f32> {
    let base = rope.theta as f32;
    let mut inv: Vec<f32> = (0..head_dim / 2)
        .map(|i| 1.0 / base.powf((2 * i) as f32 / head_dim as f32))
        .collect();
    match &rope.scaling {
        None => {}
        Some(RopeScaling::Linear { factor }) => {
            for f in &mut inv {
                *f /= *factor as f32;
            }
        }
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: old,
        }) => {
            // Llama 3.1's frequency-dependent scaling: long wavelengths are divided by `factor`,
            // short ones kept, and the band between them interpolated.
            let (factor, lo, hi, old) = (
                *factor as f32,
                *low_freq_factor as f32,
                *high_freq_factor as f32,
                *old as f32,
            );
            let low_wavelen = old / lo;
            let high_wavelen = old / hi;
            for f in &mut inv {
                let wavelen = 2.0 * std::f32::consts::PI / *f;
                let scaled = if wavelen > low_wavelen {
                    *f / factor
                } else {
                    *f
                };
                let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
                *f = if medium {
                    let smooth = (old / wavelen - lo) / (hi - lo);
                    (1.0 - smooth) * scaled / factor + smooth * scaled
                } else {
                    scaled
                };
            }
        }
    }
    inv
}

/// `(cos, sin)`, each `positions * head_dim/2` values, row-major by position.
pub fn caches(rope: &Rope, head_dim: usize, positions: usize) -> (Vec<f32>, Vec<f32>) {
    let inv = inv_freq(rope, head_dim);
    let mut cos = Vec::with_capacity(positions * inv.len());
    let mut sin = Vec::with_capacity(positions * inv.len());
    for p in 0..positions {
        for f in &inv {
            let a = p as f32 * f;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    (cos, sin)
}
