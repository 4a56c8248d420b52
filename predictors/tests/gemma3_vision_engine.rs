//! The whole Gemma 3 multimodal path against transformers: the tiny random
//! `Gemma3ForConditionalGeneration` of weights/fixtures/gemma3 (both layer types, a small SigLIP tower;
//! goldens by weights/reference/gemma3_golden.py) compiled by `cogrs weights build`, then run by the
//! engine: the vision graph's feature rows equal transformers' projected image features, and greedy
//! decoding through the embed graph (image rows merged) and the decoder (bidirectional attention over
//! the image's tokens) reproduces `generate`'s tokens. fp32 on the CPU provider.

use cog_predictors::engine::llm::{
    EngineOptions, FinishReason, GenerateRequest, Generator, Prompt, SamplingConfig,
};
use cog_predictors::engine::ort_env::SessionOptions;
use cog_predictors::engine::vision::{PixelValues, VisionModel};
use cog_weights::arch::Dtype;
use cog_weights::build::{build, BuildRequest};
use cog_weights::format::DecoderConfig;
use cog_weights::quant::QuantArg;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn ints(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// A word-level tokenizer naming every id of the tiny vocabulary (`t0`, `t1`, …): the fixture has
/// no tokenizer, and the engine needs one only to turn generated ids into text.
fn write_id_tokenizer(dir: &Path, vocab: usize) {
    let v: serde_json::Map<String, Value> = (0..vocab)
        .map(|i| (format!("t{i}"), Value::from(i)))
        .collect();
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": null,
        "decoder": null, "model": {"type": "WordLevel", "vocab": v, "unk_token": "t0"}
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
}

fn compile(quant: QuantArg) -> (tempfile::TempDir, PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("gemma3");
    build(&BuildRequest {
        input: root.join("weights/fixtures/gemma3"),
        output: dir.clone(),
        dtype: Some(Dtype::Fp32),
        quant: Some(quant),
        force: false,
        prune: None,
        command: vec!["test".into()],
    })
    .unwrap_or_else(|e| panic!("building the fixture: {e}"));
    write_id_tokenizer(&dir, 272);
    (tmp, dir)
}

fn golden() -> Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    serde_json::from_slice(
        &std::fs::read(root.join("weights/fixtures/gemma3/golden.json")).unwrap(),
    )
    .unwrap()
}

/// Runs the fixture's image and prompt through vision → embed → decoder; returns (feature rows,
/// greedy tokens).
fn run(dir: &Path, g: &Value) -> (Vec<f32>, Vec<u32>) {
    let engine: DecoderConfig =
        serde_json::from_slice(&std::fs::read(dir.join("engine.json")).unwrap()).unwrap();
    let vcfg = engine.vision.expect("engine.json has a vision section");
    let vision = VisionModel::load(dir, &vcfg, &SessionOptions::default()).unwrap();
    let shape = ints(&g["pixel_values_shape"]);
    let pixels = PixelValues {
        shape: [shape[1] as usize, shape[2] as usize, shape[3] as usize],
        data: floats(&g["pixel_values"]),
    };
    let features = vision.encode(&pixels).unwrap();
    let (_, rows) = features.try_extract_tensor::<f32>().unwrap();
    let rows = rows.to_vec();

    let generator = Generator::load(dir, &EngineOptions::default()).unwrap();
    let expected = ints(&g["generated"]);
    let req = GenerateRequest {
        prompt: Prompt::Tokens {
            text: String::new(),
            ids: ints(&g["input_ids"]),
        },
        max_new_tokens: expected.len(),
        sampling: SamplingConfig::default(),
        skip_special_tokens: false,
        ignore_eos: true,
    };
    let out = generator
        .generate_with_images(&req, Some(&features), &mut |_| {}, &|| false)
        .unwrap();
    assert_eq!(out.finish_reason, FinishReason::Length);
    (rows, out.token_ids)
}

#[test]
fn image_and_prompt_decode_like_transformers() {
    let g = golden();
    let (_tmp, dir) = compile(QuantArg::None);
    let (rows, tokens) = run(&dir, &g);
    let want = floats(&g["image_features"]);
    assert_eq!(rows.len(), want.len());
    let diff = rows
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!("image features: max abs diff {diff:e}");
    assert!(diff <= 1e-4, "image features differ by {diff}");
    // With the image's tokens attending to each other both ways (transformers with
    // token_type_ids, as the processor passes them); plain causal attention diverges at token 2.
    assert_eq!(tokens, ints(&g["generated"]), "greedy tokens");
    assert_ne!(tokens, ints(&g["generated_causal"]));
}

#[test]
fn int8_build_keeps_the_greedy_answer() {
    let g = golden();
    let (_tmp, dir) = compile(QuantArg::Rtn8);
    let engine: DecoderConfig =
        serde_json::from_slice(&std::fs::read(dir.join("engine.json")).unwrap()).unwrap();
    assert!(engine.vision.is_some());
    let (rows, tokens) = run(&dir, &g);
    let want = floats(&g["image_features"]);
    let peak = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    let diff = rows
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!("int8 image features: max abs diff {diff:e} (peak {peak})");
    // int8 RTN (block 32) of the tower's linears: within 2 % of the features' range.
    assert!(diff <= 0.02 * peak, "int8 features differ by {diff}");
    let want = ints(&g["generated"]);
    let same = tokens.iter().zip(&want).take_while(|(a, b)| a == b).count();
    eprintln!("int8 greedy: {same}/{} leading tokens equal", want.len());
    assert!(
        same >= 2,
        "int8 greedy diverges at once: {tokens:?} vs {want:?}"
    );
}
