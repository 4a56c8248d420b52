//! Structured pruning ("safe mode"): whole output rows of a linear weight `[out, in]` are zeroed,
//! ranked by L2 norm, so shapes stay the same and nothing downstream has to change. Compaction then
//! turns zeroed channels of a gated MLP into smaller tensors, so that sparsity saves memory and time.

use crate::checkpoint::Tensor;
use std::cmp::Ordering;

/// Zeroes the round(s·rows) rows of smallest L2 norm of a `[rows, cols]` row-major matrix; among
/// equal norms the higher index goes first (lower indices stay, as in magnitude pruning). Returns
/// the pruned row indices, ascending.
pub fn prune_rows(data: &mut [f32], rows: usize, cols: usize, sparsity: f64) -> Vec<usize> {
    assert_eq!(data.len(), rows * cols, "data is not [rows, cols]");
    let count = super::magnitude::pruned_count(rows, sparsity);
    let norms: Vec<f64> = data
        .chunks_exact(cols.max(1))
        .map(|r| r.iter().map(|&w| (w as f64) * (w as f64)).sum::<f64>())
        .collect();
    let mut order: Vec<usize> = (0..rows).collect();
    // Ascending norm, ties: higher index first; the first `count` are pruned.
    order.sort_by(|&a, &b| match norms[a].total_cmp(&norms[b]) {
        Ordering::Equal => b.cmp(&a),
        o => o,
    });
    let mut pruned: Vec<usize> = order[..count].to_vec();
    pruned.sort_unstable();
    for &r in &pruned {
        data[r * cols..(r + 1) * cols].fill(0.0);
    }
    pruned
}

/// A gated MLP after compaction: the kept intermediate channels, and the three smaller weights.
#[derive(Debug, Clone, PartialEq)]
pub struct CompactMlp {
    /// Original indices of the kept channels, ascending.
    pub kept: Vec<usize>,
    pub gate: Tensor,
    pub up: Tensor,
    pub down: Tensor,
}

/// Drops the dead channels of a gated MLP `down(act(gate·x) ⊙ (up·x))`, gate and up `[I, H]`, down
/// `[H, I]`. Channel i is dead when its gate row, its up row or its down column is all zeros: the
/// product is then zero for every input (Gemma's GELU-tanh and SiLU both map 0 to 0), so removing
/// the channel changes no output. Returns the compacted weights or a message naming the bad shape.
pub fn compact_mlp(gate: &Tensor, up: &Tensor, down: &Tensor) -> Result<CompactMlp, String> {
    let (&[i, h], &[iu, hu], &[hd, id]) = (&gate.shape[..], &up.shape[..], &down.shape[..]) else {
        return Err(format!(
            "gated MLP weights must be 2-D: gate {:?}, up {:?}, down {:?}",
            gate.shape, up.shape, down.shape
        ));
    };
    if (iu, hu, hd, id) != (i, h, h, i) {
        return Err(format!(
            "gate {:?}, up {:?} and down {:?} are not [I, H], [I, H], [H, I]",
            gate.shape, up.shape, down.shape
        ));
    }
    let zero_row = |t: &Tensor, r: usize| t.data[r * h..(r + 1) * h].iter().all(|&w| w == 0.0);
    let zero_col = |c: usize| (0..h).all(|r| down.data[r * i + c] == 0.0);
    let kept: Vec<usize> = (0..i)
        .filter(|&c| !(zero_row(gate, c) || zero_row(up, c) || zero_col(c)))
        .collect();
    let rows = |t: &Tensor| {
        let mut d = Vec::with_capacity(kept.len() * h);
        for &c in &kept {
            d.extend_from_slice(&t.data[c * h..(c + 1) * h]);
        }
        Tensor::new(vec![kept.len(), h], d)
    };
    let mut d = Vec::with_capacity(h * kept.len());
    for r in 0..h {
        let row = &down.data[r * i..(r + 1) * i];
        d.extend(kept.iter().map(|&c| row[c]));
    }
    Ok(CompactMlp {
        gate: rows(gate),
        up: rows(up),
        down: Tensor::new(vec![h, kept.len()], d),
        kept,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_norm_rows_prune_higher_index() {
        let mut d = vec![1.0, 0.0, 0.0, 1.0, 3.0, 0.0];
        assert_eq!(prune_rows(&mut d, 3, 2, 0.34), vec![1]);
        assert_eq!(d, vec![1.0, 0.0, 0.0, 0.0, 3.0, 0.0]);
    }
}
