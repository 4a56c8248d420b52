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

/// Two sequences in one batch, the shorter right-padded (GroupQueryAttention takes each one's
/// length from `seqlens_k`, i.e. from the mask): each row's logits match its own golden rows.
#[test]
fn batched_right_padded_prefill() {
    use ort::value::Tensor;
    let g = golden("smollm3");
    let (_tmp, dir) = compile(&fixture("smollm3"), Dtype::Fp32, QuantArg::None);
    let dec = Decoder::open(&dir);
    let mut session = dec.session;
    let (p, short) = (g.prompt.len(), 4usize);
    let mut ids = g.prompt.clone();
    ids.extend(
        g.prompt[..short]
            .iter()
            .copied()
            .chain(std::iter::repeat_n(0, p - short)),
    );
    let mut mask = vec![1i64; p];
    mask.extend(std::iter::repeat_n(1, short).chain(std::iter::repeat_n(0, p - short)));
    let mut inputs: Vec<(String, ort::value::DynValue)> = vec![
        (
            "input_ids".into(),
            Tensor::from_array((vec![2i64, p as i64], ids))
                .unwrap()
                .into_dyn(),
        ),
        (
            "attention_mask".into(),
            Tensor::from_array((vec![2i64, p as i64], mask))
                .unwrap()
                .into_dyn(),
        ),
    ];
    for i in 0..dec.layers {
        for n in ["key", "value"] {
            let shape = vec![2i64, dec.kv_heads as i64, 0, dec.head_dim as i64];
            inputs.push((
                format!("past_key_values.{i}.{n}"),
                Tensor::from_array((shape, Vec::<f32>::new()))
                    .unwrap()
                    .into_dyn(),
            ));
        }
    }
    let out = session.run(inputs).unwrap();
    let (_, logits) = out["logits"].try_extract_tensor::<f32>().unwrap();
    let v = g.vocab;
    for t in 0..p {
        let d = max_abs_diff(&logits[t * v..(t + 1) * v], &g.logits[t]);
        assert!(d <= TOL, "row 0 position {t}: {d}");
    }
    for t in 0..short {
        let row = &logits[(p + t) * v..(p + t + 1) * v];
        let d = max_abs_diff(row, &g.logits[t]);
        assert!(d <= TOL, "row 1 (padded) position {t}: {d}");
    }
}
