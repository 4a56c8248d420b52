//! End to end on a real chat model: SmolLM2-135M-Instruct (the GGUF fetched by
//! `scripts/setup.d/weights-smollm2`), compiled by cog-weights into a decoder folder, then run by the
//! engine's Generator on the CPU: the model's own template renders the prompt exactly as transformers did,
//! and greedy decoding reproduces transformers' tokens (golden: weights/fixtures/smollm2_gguf.json, made by
//! weights/reference/smollm2_gguf_golden.py) and answers Paris. Needs `scripts/setup` first.

use cog_predictors::engine::llm::{
    ChatMessage, EngineOptions, FinishReason, GenerateRequest, Generator, Prompt, SamplingConfig,
    TemplateOptions,
};
use cog_weights::arch::Dtype;
use cog_weights::build::{build, BuildRequest};
use cog_weights::quant::QuantArg;
use std::path::Path;

#[test]
fn smollm2_answers_like_transformers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let gguf = root.join(".cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        gguf.exists(),
        "{} is missing: run scripts/setup (step scripts/setup.d/weights-smollm2)",
        gguf.display()
    );
    let golden: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root.join("weights/fixtures/smollm2_gguf.json")).unwrap(),
    )
    .unwrap();
    let ids = |k: &str| {
        golden[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect::<Vec<u32>>()
    };

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("smollm2");
    build(&BuildRequest {
        input: gguf,
        output: dir.clone(),
        dtype: Some(Dtype::Fp32),
        quant: Some(QuantArg::None),
        force: false,
        prune: None,
        command: vec!["engine test".into()],
    })
    .unwrap_or_else(|e| panic!("compiling SmolLM2: {e}"));
    let g = Generator::load(&dir, &EngineOptions::default()).unwrap_or_else(|e| panic!("{e}"));

    let req = GenerateRequest {
        prompt: Prompt::Chat {
            messages: vec![ChatMessage::new("user", "What is the capital of France?")],
            template: TemplateOptions::default(),
        },
        max_new_tokens: 64,
        sampling: SamplingConfig::default(),
        skip_special_tokens: true,
        ignore_eos: false,
    };
    let mut chunks = Vec::new();
    let out = g
        .generate(&req, &mut |c| chunks.push(c.to_string()), &|| false)
        .unwrap();
    assert_eq!(
        out.prompt_text,
        golden["prompt"].as_str().unwrap(),
        "template rendering differs from transformers'"
    );
    assert_eq!(g.encode(&out.prompt_text).unwrap(), ids("prompt_ids"));
    let want = ids("generated");
    let (body, eos) = want.split_at(want.len() - 1);
    assert_eq!(
        out.token_ids, body,
        "greedy tokens differ from transformers'"
    );
    assert_eq!(eos, [2], "transformers stopped on <|im_end|>");
    assert_eq!(out.finish_reason, FinishReason::Stop);
    assert_eq!(chunks.concat(), out.text);
    assert!(out.text.contains("Paris"), "{:?}", out.text);
    eprintln!(
        "SmolLM2-135M fp32 CPU: {:?}; {} prompt tokens, ttft {:.1} ms, {:.1} tok/s",
        out.text,
        out.metrics.input_token_count,
        out.metrics.time_to_first_token * 1e3,
        out.metrics.tokens_per_second
    );

    // Sampling with a seed is reproducible on a real model too.
    let sampled = GenerateRequest {
        sampling: SamplingConfig {
            temperature: 0.8,
            top_k: Some(50),
            top_p: Some(0.95),
            seed: Some(1234),
        },
        ..req
    };
    let a = g.generate(&sampled, &mut |_| {}, &|| false).unwrap();
    let b = g.generate(&sampled, &mut |_| {}, &|| false).unwrap();
    assert_eq!((a.seed, &a.token_ids), (1234, &b.token_ids));
}
