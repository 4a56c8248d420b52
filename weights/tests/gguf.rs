//! The real SmolLM2-135M-Instruct, compiled from its Q4_1 GGUF (fetched by
//! `scripts/setup.d/weights-smollm2`): the rebuilt tokenizer and chat template, and a greedy
//! answer from our graph on ONNX Runtime CPU.

mod common;

use cog_weights::arch::Dtype;
use cog_weights::build::{build, BuildRequest};
use cog_weights::quant::QuantArg;
use common::*;
use std::path::PathBuf;

fn smollm2_gguf() -> PathBuf {
    let p = std::env::var_os("COG_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate_dir().join("../.cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"));
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup (or scripts/setup.d/weights-smollm2), or set COG_SMOLLM2_GGUF",
        p.display()
    );
    p
}

fn render_chat(dir: &std::path::Path, question: &str) -> String {
    let template = std::fs::read_to_string(dir.join("chat_template.jinja")).expect("chat template");
    let mut env = minijinja::Environment::new();
    env.add_template("chat", &template).unwrap();
    env.get_template("chat")
        .unwrap()
        .render(minijinja::context! {
            messages => vec![minijinja::context! { role => "user", content => question }],
            add_generation_prompt => true,
        })
        .unwrap()
}

#[test]
fn smollm2_gguf_answers_paris() {
    let (_t, dir) = compile(&smollm2_gguf(), Dtype::Fp32, QuantArg::None);
    let engine: cog_weights::format::DecoderConfig =
        serde_json::from_slice(&std::fs::read(dir.join("engine.json")).unwrap()).unwrap();
    assert_eq!(
        (
            engine.num_layers,
            engine.num_heads,
            engine.num_kv_heads,
            engine.hidden_size
        ),
        (30, 9, 3, 576)
    );
    assert_eq!(engine.vocab_size, 49152);

    let golden: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixture("smollm2_gguf.json"))
            .expect("golden from weights/reference/smollm2_gguf_golden.py"),
    )
    .unwrap();
    let ints = |k: &str| -> Vec<i64> {
        golden[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect()
    };

    // Template and tokenizer rebuilt from GGUF metadata agree with transformers' GGUF loader.
    let prompt = render_chat(&dir, "What is the capital of France?");
    assert_eq!(
        prompt,
        golden["prompt"].as_str().unwrap(),
        "chat template rendering"
    );
    let tok = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let enc = tok.encode(prompt.as_str(), false).unwrap();
    let ids: Vec<i64> = enc.get_ids().iter().map(|&i| i as i64).collect();
    assert_eq!(ids, ints("prompt_ids"), "token ids");
    assert_eq!(
        tok.decode(enc.get_ids(), false).unwrap(),
        prompt,
        "round trip"
    );

    // Logits of the last prompt position at transformers' top-32 ids, then greedy tokens.
    let mut dec = Decoder::open(&dir);
    let last = dec.step(&ids).pop().unwrap();
    let top_ids = ints("top_ids");
    let top: Vec<f32> = golden["top_logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let ours: Vec<f32> = top_ids.iter().map(|&i| last[i as usize]).collect();
    let diff = max_abs_diff(&ours, &top);
    eprintln!("SmolLM2 GGUF: max abs diff over transformers' top-32 logits {diff:e}");
    assert!(diff <= 1e-4, "logits differ from transformers by {diff}");
    assert_eq!(argmax(&last) as i64, top_ids[0]);

    let want = ints("generated");
    let mut next = argmax(&last) as i64;
    let mut out = Vec::new();
    for (t, &w) in want.iter().enumerate() {
        assert_eq!(
            next, w,
            "greedy token {t} differs from transformers ({out:?})"
        );
        out.push(next as u32);
        if engine.tokens.eos_token_ids.contains(&(next as u32)) {
            break;
        }
        next = argmax(&dec.step(&[next])[0]) as i64;
    }
    let answer = tok.decode(&out, true).unwrap();
    eprintln!("SmolLM2 answered: {answer:?}");
    assert!(answer.contains("Paris"), "answer without Paris: {answer:?}");
}

#[test]
fn truncated_gguf_names_file_and_tensor() {
    let src = std::fs::read(smollm2_gguf()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let cut = tmp.path().join("cut.gguf");
    // Half the file: the header parses, a tensor's data runs past the end.
    std::fs::write(&cut, &src[..src.len() / 2]).unwrap();
    let req = |input: &std::path::Path| BuildRequest {
        input: input.to_path_buf(),
        output: tmp.path().join("out"),
        dtype: Some(Dtype::Fp32),
        quant: Some(QuantArg::None),
        force: false,
        prune: None,
        command: vec![],
    };
    let msg = build(&req(&cut)).unwrap_err().to_string();
    assert!(
        msg.contains("cut.gguf") && msg.contains("(tensor \"") && msg.contains("truncated"),
        "{msg}"
    );
    // Cut inside the metadata.
    std::fs::write(&cut, &src[..4096]).unwrap();
    let msg = build(&req(&cut)).unwrap_err().to_string();
    assert!(
        msg.contains("cut.gguf") && msg.contains("truncated or corrupt at byte"),
        "{msg}"
    );
    assert!(!tmp.path().join("out").exists());
}

/// The real model quantised to RTN int4 (block 32, the fast CUDA format) from its dequantised
/// Q4_1 weights: still answers with Paris, and over transformers' greedy continuation keeps most
/// top-1 tokens. Measured: see the eprintln; bounds leave margin.
#[test]
fn smollm2_gguf_rtn4_stays_close() {
    let golden: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("smollm2_gguf.json")).unwrap()).unwrap();
    let ints = |k: &str| -> Vec<i64> {
        golden[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect()
    };
    let (_t, dir) = compile(&smollm2_gguf(), Dtype::Fp32, QuantArg::Rtn4);
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("quantization_report.json")).unwrap())
            .unwrap();
    assert_eq!(
        report.as_array().unwrap().len(),
        30 * 4,
        "four linears per layer, lm_head kept"
    );
    let (prompt, generated) = (ints("prompt_ids"), ints("generated"));
    let mut seq = prompt.clone();
    seq.extend(&generated[..generated.len() - 1]);
    let rows = Decoder::open(&dir).step(&seq);
    let p = prompt.len();
    let agree = (0..generated.len())
        .filter(|&t| argmax(&rows[p - 1 + t]) as i64 == generated[t])
        .count();
    eprintln!(
        "SmolLM2 rtn4: {agree}/{} greedy tokens kept (teacher-forced)",
        generated.len()
    );
    assert!(
        agree * 4 >= generated.len() * 3,
        "rtn4 kept only {agree}/{}",
        generated.len()
    );

    // Free-running greedy answer.
    let tok = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let mut dec = Decoder::open(&dir);
    let engine: cog_weights::format::DecoderConfig =
        serde_json::from_slice(&std::fs::read(dir.join("engine.json")).unwrap()).unwrap();
    let mut next = argmax(dec.step(&prompt).last().unwrap()) as i64;
    let mut out = Vec::new();
    for _ in 0..16 {
        if engine.tokens.eos_token_ids.contains(&(next as u32)) {
            break;
        }
        out.push(next as u32);
        next = argmax(&dec.step(&[next])[0]) as i64;
    }
    let answer = tok.decode(&out, true).unwrap();
    eprintln!("SmolLM2 rtn4 answered: {answer:?}");
    assert!(answer.contains("Paris"), "{answer:?}");
}
