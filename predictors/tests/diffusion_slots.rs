//! Two LoRAs of different ranks and target sets packed into one slot layout: with scale vector
//! s, every module's change is exactly Σ_i s_i · ΔW_i of the LoRAs on their own.

use cog_predictors::engine::diffusion::lora::{Layout, Lora, LoraLayer, Matrix};
use cog_predictors::engine::diffusion::slots::Slots;
use std::collections::BTreeMap;

fn mat(rows: usize, cols: usize, seed: usize) -> Matrix {
    let data = (0..rows * cols)
        .map(|i| (((i * 7919 + seed * 104729) % 1000) as f32 / 500.0) - 1.0)
        .collect();
    Matrix { rows, cols, data }
}

fn lora(layers: &[(&str, usize, usize, usize, f32)]) -> Lora {
    let layers: BTreeMap<String, LoraLayer> = layers
        .iter()
        .enumerate()
        .map(|(i, &(name, out_f, in_f, rank, scale))| {
            (
                name.to_string(),
                LoraLayer {
                    down: mat(rank, in_f, 2 * i + 1),
                    up: mat(out_f, rank, 2 * i + 2),
                    scale,
                },
            )
        })
        .collect();
    Lora {
        layout: Layout::Peft,
        layers,
        skipped: vec![],
    }
}

fn zero(rows: usize, cols: usize) -> Matrix {
    Matrix {
        rows,
        cols,
        data: vec![0.0; rows * cols],
    }
}

fn add_scaled(acc: &mut Matrix, m: &Matrix, s: f32) {
    acc.data
        .iter_mut()
        .zip(&m.data)
        .for_each(|(a, b)| *a += s * b);
}

fn close(a: &Matrix, b: &Matrix) {
    assert_eq!((a.rows, a.cols), (b.rows, b.cols));
    for (x, y) in a.data.iter().zip(&b.data) {
        assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{x} vs {y}");
    }
}

#[test]
fn both_loras_on_off_and_scaled() {
    // preferences: rank 8 on attention; ghibsky: rank 16 (one layer at rank 4) on attention + MLP
    let prefs = lora(&[
        ("transformer_blocks.0.attn.to_q", 12, 12, 8, 1.0),
        ("transformer_blocks.0.attn.to_k", 12, 12, 8, 1.0),
    ]);
    let ghib = lora(&[
        ("transformer_blocks.0.attn.to_k", 12, 12, 16, 0.5),
        ("transformer_blocks.0.ff.net.2", 12, 48, 4, 2.0),
        ("single_transformer_blocks.3.proj_out", 12, 60, 16, 1.0),
    ]);
    let slots = Slots::pack(&[&prefs, &ghib]).unwrap();
    assert_eq!(
        (slots.rank, slots.segments.clone()),
        (24, vec![0..8, 8..24])
    );
    assert_eq!(slots.modules.len(), 4, "the union of the target sets");
    for (a, b) in [(1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (0.0, 0.0), (0.8, 1.7)] {
        let s = slots.scales(&[a, b]);
        for (name, w) in &slots.modules {
            let mut want = zero(w.b.rows, w.a.cols);
            for (l, k) in [(&prefs, a), (&ghib, b)] {
                if let Some(layer) = l.layers.get(name) {
                    add_scaled(&mut want, &layer.delta(), k);
                }
            }
            close(&slots.delta(name, &s).unwrap(), &want);
        }
    }
    // the unused tail of a rank-4 layer in a 16-wide segment is zero
    let ff = &slots.modules["transformer_blocks.0.ff.net.2"];
    assert!(ff.a.data[(8 + 4) * 48..].iter().all(|&x| x == 0.0));
    assert!(
        ff.a.data[..8 * 48].iter().all(|&x| x == 0.0),
        "preferences does not target the MLP"
    );
}

#[test]
fn mismatched_shapes_are_refused() {
    let a = lora(&[("proj_out", 12, 12, 2, 1.0)]);
    let b = lora(&[("proj_out", 12, 16, 2, 1.0)]);
    let err = Slots::pack(&[&a, &b]).unwrap_err();
    assert_eq!((err.lora, err.got_in, err.want_in), (1, 16, 12));
}
