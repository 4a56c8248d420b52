//! fp32 parity with transformers on the tiny fixtures: logits within 1e-4 and identical greedy
//! tokens, for the prefill and for step-by-step decoding through the KV cache.

mod common;

use cog_weights::arch::Dtype;
use cog_weights::quant::QuantArg;
use common::*;

const TOL: f32 = 1e-4;

fn parity(name: &str) {
    let g = golden(name);
    let (_tmp, dir) = compile(&fixture(name), Dtype::Fp32, QuantArg::None);
    let mut dec = Decoder::open(&dir);
    let p = g.prompt.len();

    let prefill = dec.step(&g.prompt);
    let diffs: Vec<f32> = (0..p)
        .map(|t| max_abs_diff(&prefill[t], &g.logits[t]))
        .collect();
    eprintln!("{name}: prefill diffs {diffs:?}");
    for (t, d) in diffs.iter().enumerate() {
        assert!(
            *d <= TOL,
            "{name}: prefill position {t}: max abs logit diff {d} > {TOL}"
        );
    }
    let mut next = argmax(&prefill[p - 1]) as i64;
    let mut worst = 0f32;
    for (t, &want) in g.generated.iter().enumerate() {
        assert_eq!(
            next, want,
            "{name}: greedy token {t} differs from transformers"
        );
        if t + 1 == g.generated.len() {
            break;
        }
        let row = dec.step(&[next]).remove(0);
        let d = max_abs_diff(&row, &g.logits[p + t]);
        worst = worst.max(d);
        assert!(
            d <= TOL,
            "{name}: decode step {t}: max abs logit diff {d} > {TOL}"
        );
        next = argmax(&row) as i64;
    }
    eprintln!("{name}: parity ok, worst decode diff {worst:e}");
}

#[test]
fn llama_matches_transformers() {
    parity("llama");
}

#[test]
fn smollm3_matches_transformers() {
    parity("smollm3");
}

#[test]
fn phi3_matches_transformers() {
    parity("phi3");
}

#[test]
fn phi3_sliding_window_matches_transformers() {
    parity("phi3_sliding");
}
