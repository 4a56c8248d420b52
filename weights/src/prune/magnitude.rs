//! Unstructured magnitude pruning: keep the K weights of largest |w|, zero the rest; and its gradual
//! form, which raises sparsity over N steps on the cubic schedule of Zhu & Gupta (2017) with a
//! caller's hook between steps (fine-tuning or re-calibration happen there, outside this crate).

use std::cmp::Ordering;

/// How many of `n` weights a sparsity removes: round(s·n), so the reached sparsity is the closest
/// one a tensor of that size can have.
pub fn pruned_count(n: usize, sparsity: f64) -> usize {
    ((sparsity.clamp(0.0, 1.0) * n as f64).round() as usize).min(n)
}

/// Zeroes all but the `keep` weights of largest magnitude. The threshold is the keep-th largest
/// |w|; weights above it stay, and among weights equal to it the lower indices stay, so the result
/// does not depend on the selection algorithm. Returns how many weights were set to zero that were
/// not zero before. Callers reject non-finite data first (|NaN| has no rank).
pub fn keep_top_k(data: &mut [f32], keep: usize) -> usize {
    let n = data.len();
    if keep >= n {
        return 0;
    }
    let mut zeroed = 0;
    let mut zero = |w: &mut f32| {
        if *w != 0.0 {
            zeroed += 1;
        }
        *w = 0.0;
    };
    if keep == 0 {
        data.iter_mut().for_each(&mut zero);
        return zeroed;
    }
    let mut mags: Vec<f32> = data.iter().map(|w| w.abs()).collect();
    let desc = |a: &f32, b: &f32| -> Ordering { b.total_cmp(a) };
    let (_, &mut threshold, _) = mags.select_nth_unstable_by(keep - 1, desc);
    drop(mags);
    let above = data.iter().filter(|w| w.abs() > threshold).count();
    let mut ties_kept = keep - above;
    for w in data.iter_mut() {
        let m = w.abs();
        if m > threshold {
            continue;
        }
        if m == threshold && ties_kept > 0 {
            ties_kept -= 1;
            continue;
        }
        zero(w);
    }
    zeroed
}

/// Magnitude pruning to a sparsity: keeps n − round(s·n) weights.
pub fn magnitude(data: &mut [f32], sparsity: f64) -> usize {
    let keep = data.len() - pruned_count(data.len(), sparsity);
    keep_top_k(data, keep)
}

/// Sparsity at step `t` of `steps` on the cubic schedule s_t = s_f·(1 − (1 − t/N)³): fast early
/// while many redundant weights remain, slow near the end where each removal costs more.
pub fn cubic_schedule(final_sparsity: f64, t: usize, steps: usize) -> f64 {
    assert!(steps > 0, "the schedule needs at least one step");
    let frac = 1.0 - (t.min(steps) as f64 / steps as f64);
    final_sparsity * (1.0 - frac * frac * frac)
}

/// Fraction of exact zeros.
pub fn sparsity_of(data: &[f32]) -> f64 {
    if data.is_empty() {
        return 0.0;
    }
    data.iter().filter(|w| **w == 0.0).count() as f64 / data.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_keep_lower_indices() {
        let mut d = vec![1.0, -2.0, 2.0, 0.5, -2.0];
        assert_eq!(keep_top_k(&mut d, 2), 3);
        assert_eq!(d, vec![0.0, -2.0, 2.0, 0.0, 0.0]);
    }

    #[test]
    fn keep_zero_and_all() {
        let mut d = vec![1.0, 0.0, 3.0];
        assert_eq!(keep_top_k(&mut d, 0), 2);
        assert_eq!(d, vec![0.0; 3]);
        let mut d = vec![1.0, 2.0];
        assert_eq!(keep_top_k(&mut d, 2), 0);
        assert_eq!(d, vec![1.0, 2.0]);
    }
}
