//! Magnitude, gradual and structured pruning: exact sparsity, top-K against a brute-force reference,
//! the cubic schedule's values, the hook between steps, and MLP compaction that changes no output.

use cog_weights::checkpoint::Tensor;
use cog_weights::prune::magnitude::{cubic_schedule, keep_top_k, magnitude, pruned_count};
use cog_weights::prune::structured::{compact_mlp, prune_rows};
use cog_weights::prune::{self, FilterMap, GradualStep, PruneError};

/// xorshift64*: deterministic test data without a dependency.
struct Rng(u64);
impl Rng {
    fn f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545F4914F6CDD1D) >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f32()).collect()
    }
}

/// Reference: sort indices by (|w| descending, index ascending), keep the first K.
fn reference_keep(data: &[f32], keep: usize) -> Vec<f32> {
    let mut idx: Vec<usize> = (0..data.len()).collect();
    idx.sort_by(|&a, &b| data[b].abs().total_cmp(&data[a].abs()).then(a.cmp(&b)));
    let mut out = vec![0.0; data.len()];
    for &i in &idx[..keep] {
        out[i] = data[i];
    }
    out
}

#[test]
fn top_k_matches_a_sort_based_reference_including_ties() {
    let mut rng = Rng(7);
    for n in [1, 2, 3, 10, 97, 1000] {
        for coarse in [false, true] {
            // Coarse values (a few levels) make many ties at the threshold.
            let data: Vec<f32> = rng
                .vec(n)
                .into_iter()
                .map(|v| if coarse { (v * 3.0).round() / 3.0 } else { v })
                .collect();
            for keep in [0, 1, n / 3, n / 2, n - 1, n] {
                let mut got = data.clone();
                keep_top_k(&mut got, keep);
                assert_eq!(
                    got,
                    reference_keep(&data, keep),
                    "n {n} keep {keep} coarse {coarse}"
                );
            }
        }
    }
}

#[test]
fn magnitude_reaches_the_exact_sparsity() {
    let mut rng = Rng(11);
    for (n, s, zeros) in [
        (1000, 0.5, 500),
        (1000, 0.25, 250),
        (7, 0.5, 4),
        (10, 0.0, 0),
        (10, 1.0, 10),
    ] {
        let mut d = rng.vec(n);
        magnitude(&mut d, s);
        assert_eq!(
            d.iter().filter(|w| **w == 0.0).count(),
            zeros,
            "n {n} s {s}"
        );
        assert_eq!(pruned_count(n, s), zeros);
    }
}

#[test]
fn cubic_schedule_values() {
    let want = [0.0, 0.2890625, 0.4375, 0.4921875, 0.5];
    for (t, w) in want.iter().enumerate() {
        assert!((cubic_schedule(0.5, t, 4) - w).abs() < 1e-12, "t {t}");
    }
    assert_eq!(cubic_schedule(0.4, 10, 10), 0.4);
}

fn all_map() -> FilterMap {
    serde_json::from_str(
        r#"{"model": "t", "allow": [{"pattern": "*.weight", "why": "test"}], "deny": []}"#,
    )
    .unwrap()
}

#[test]
fn gradual_follows_the_schedule_and_calls_the_hook_between_steps() {
    let mut rng = Rng(3);
    let mut ts = vec![
        (
            "a.weight".to_string(),
            Tensor::new(vec![20, 50], rng.vec(1000)),
        ),
        ("b.bias".to_string(), Tensor::new(vec![8], rng.vec(8))),
    ];
    let mut seen = Vec::new();
    let reports = prune::gradual(
        &mut ts,
        &all_map(),
        0.5,
        4,
        |step: &GradualStep, t, reps| {
            let zeros = t[0].1.data.iter().filter(|w| **w == 0.0).count();
            seen.push((step.step, step.sparsity, zeros, reps[0].sparsity));
            // A stand-in for fine-tuning: nudge the surviving weights; the next step prunes what it gives.
            t[0].1
                .data
                .iter_mut()
                .filter(|w| **w != 0.0)
                .for_each(|w| *w *= 1.01);
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(
        seen,
        vec![
            (1, 0.2890625, 289, 0.289),
            (2, 0.4375, 438, 0.438),
            (3, 0.4921875, 492, 0.492)
        ]
    );
    assert_eq!(reports[0].sparsity, 0.5);
    assert_eq!(reports[0].zeroed, 500);
    assert_eq!(reports[0].method, "gradual");
    assert!(reports[1]
        .skipped
        .as_deref()
        .unwrap()
        .contains("not in the filter map"));
    assert_eq!(ts[0].1.data.iter().filter(|w| **w == 0.0).count(), 500);

    let err = prune::gradual(&mut ts, &all_map(), 0.5, 3, |s, _, _| {
        Err(format!("diverged at {}", s.step))
    });
    assert_eq!(
        err.unwrap_err(),
        PruneError::Hook {
            step: 1,
            message: "diverged at 1".into()
        }
    );
    assert_eq!(
        prune::gradual(&mut ts, &all_map(), 0.5, 0, |_, _, _| Ok(())).unwrap_err(),
        PruneError::NoSteps
    );
    assert!(matches!(
        prune::prune(
            &mut ts,
            &all_map(),
            prune::Method::Magnitude { sparsity: 1.5 }
        ),
        Err(PruneError::InvalidSparsity(_))
    ));
}

#[test]
fn structured_zeroes_the_lowest_norm_rows() {
    let mut rng = Rng(5);
    let (rows, cols) = (16, 9);
    let mut d = rng.vec(rows * cols);
    // Rows 3 and 11 get the smallest norms by construction.
    for r in [3, 11] {
        d[r * cols..(r + 1) * cols]
            .iter_mut()
            .for_each(|w| *w *= 0.01);
    }
    let norms: Vec<f32> = d
        .chunks(cols)
        .map(|r| r.iter().map(|w| w * w).sum())
        .collect();
    let pruned = prune_rows(&mut d, rows, cols, 0.25);
    assert_eq!(pruned.len(), 4);
    assert!(pruned.contains(&3) && pruned.contains(&11));
    let max_pruned = pruned.iter().map(|&r| norms[r]).fold(0.0, f32::max);
    for r in 0..rows {
        let zero = d[r * cols..(r + 1) * cols].iter().all(|w| *w == 0.0);
        assert_eq!(zero, pruned.contains(&r), "row {r}");
        if !zero {
            assert!(
                norms[r] >= max_pruned,
                "kept row {r} has a smaller norm than a pruned one"
            );
        }
    }
}

fn gelu_tanh(x: f32) -> f32 {
    0.5 * x * (1.0 + (0.797_884_6 * (x + 0.044715 * x * x * x)).tanh())
}

/// y = down(gelu_tanh(gate x) ⊙ up x), weights row-major [out, in].
fn mlp(gate: &Tensor, up: &Tensor, down: &Tensor, x: &[f32]) -> Vec<f32> {
    let mv = |t: &Tensor, v: &[f32]| -> Vec<f32> {
        t.data
            .chunks(t.shape[1])
            .map(|r| r.iter().zip(v).map(|(a, b)| a * b).sum())
            .collect()
    };
    let h: Vec<f32> = mv(gate, x)
        .iter()
        .zip(mv(up, x))
        .map(|(g, u)| gelu_tanh(*g) * u)
        .collect();
    mv(down, &h)
}

#[test]
fn compaction_drops_dead_channels_without_changing_the_output() {
    let mut rng = Rng(9);
    let (h, i) = (12, 32);
    let gate = Tensor::new(vec![i, h], rng.vec(i * h));
    let mut up = Tensor::new(vec![i, h], rng.vec(i * h));
    let mut down = Tensor::new(vec![h, i], rng.vec(h * i));
    let pruned = prune_rows(&mut up.data, i, h, 0.5);
    // One more channel dead through down's column.
    let extra = (0..i).find(|c| !pruned.contains(c)).unwrap();
    (0..h).for_each(|r| down.data[r * i + extra] = 0.0);
    let c = compact_mlp(&gate, &up, &down).unwrap();
    assert_eq!(c.kept.len(), i - pruned.len() - 1);
    assert!(c.kept.iter().all(|k| !pruned.contains(k) && *k != extra));
    assert_eq!(
        (
            c.gate.shape.clone(),
            c.up.shape.clone(),
            c.down.shape.clone()
        ),
        (
            vec![c.kept.len(), h],
            vec![c.kept.len(), h],
            vec![h, c.kept.len()]
        )
    );
    for _ in 0..5 {
        let x = rng.vec(h);
        let (a, b) = (mlp(&gate, &up, &down, &x), mlp(&c.gate, &c.up, &c.down, &x));
        for (p, q) in a.iter().zip(&b) {
            assert!((p - q).abs() <= 1e-6 * p.abs().max(1.0), "{a:?} vs {b:?}");
        }
    }
    let e = compact_mlp(
        &gate,
        &up,
        &Tensor::new(vec![h, i - 1], rng.vec(h * (i - 1))),
    )
    .unwrap_err();
    assert!(e.contains("not [I, H], [I, H], [H, I]"), "{e}");
}

#[test]
fn non_finite_and_non_matrix_tensors_are_skipped_with_a_reason() {
    let mut ts = vec![
        (
            "nan.weight".to_string(),
            Tensor::new(vec![2, 2], vec![1.0, f32::NAN, 2.0, 3.0]),
        ),
        (
            "vec.weight".to_string(),
            Tensor::new(vec![4], vec![1.0, 2.0, 3.0, 4.0]),
        ),
    ];
    let before = ts.clone();
    let r = prune::prune(
        &mut ts,
        &all_map(),
        prune::Method::Structured { sparsity: 0.5 },
    )
    .unwrap();
    assert!(r[0].skipped.as_deref().unwrap().contains("non-finite"));
    assert!(r[1].skipped.as_deref().unwrap().contains("2-D"));
    assert_eq!(ts[1], before[1]);
    assert_eq!(ts[0].1.data[0], 1.0);
}
