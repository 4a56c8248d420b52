//! The engine on a CUDA device (ignored elsewhere: CI has no GPU). On the GPU machine, with the
//! onnxruntime-gpu==1.31.1 library:
//!     COG_EP=cuda ORT_DYLIB_PATH=/path/libonnxruntime.so.1.31.1 cargo test -p cog-predictors --test engine_cuda -- --ignored --nocapture
//! Checks: the tiny decoder's growing cache bound to CUDA memory follows the exact recurrence; the real
//! SmolLM2-135M-Instruct compiled in fp16 (GroupQueryAttention, shared in-place KV buffer on the device)
//! answers Paris; the optimised-model cache makes the second load faster. Prints load, TTFT and decode speed.

use cog_predictors::engine::llm::{
    ChatMessage, EngineOptions, GenerateRequest, Generator, Prompt, SamplingConfig, TemplateOptions,
};
use cog_predictors::engine::ort_env::{runtime, Ep, LoadedFrom, SessionOptions};
use cog_weights::arch::Dtype;
use cog_weights::build::{build, BuildRequest};
use cog_weights::quant::QuantArg;
use std::path::{Path, PathBuf};
use std::time::Instant;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn expected(prompt: &[u32], max_new: usize) -> Vec<u32> {
    let mut s: u64 = prompt.iter().map(|&t| t as u64).sum();
    let mut out = Vec::new();
    while out.len() < max_new && !matches!(s % 260, 256 | 258) {
        out.push((s % 260) as u32);
        s += s % 260;
    }
    out
}

fn chat(q: &str, max_new_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        prompt: Prompt::Chat {
            messages: vec![ChatMessage::new("user", q)],
            template: TemplateOptions::default(),
        },
        max_new_tokens,
        sampling: SamplingConfig::default(),
        skip_special_tokens: true,
        ignore_eos: false,
    }
}

#[test]
#[ignore = "needs a CUDA device and the onnxruntime-gpu library (see the file's header)"]
fn cuda_generation() {
    let rt = runtime().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rt.ep, Ep::Cuda, "run with COG_EP=cuda and the GPU library");

    let tiny = tempfile::tempdir().unwrap();
    for f in [
        "engine.json",
        "model.onnx",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(
            root().join("predictors/fixtures/tiny-decoder").join(f),
            tiny.path().join(f),
        )
        .unwrap();
    }
    let g =
        Generator::load(tiny.path(), &EngineOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let req = GenerateRequest {
        prompt: Prompt::Raw("Hi".into()),
        max_new_tokens: 40,
        sampling: SamplingConfig::default(),
        skip_special_tokens: false,
        ignore_eos: false,
    };
    let out = g.generate(&req, &mut |_| {}, &|| false).unwrap();
    assert_eq!(
        out.token_ids,
        expected(&[72, 105], 40),
        "tiny decoder on CUDA"
    );
    eprintln!(
        "tiny decoder on CUDA: {} tokens as expected",
        out.token_ids.len()
    );

    let gguf = std::env::var_os("COG_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"));
    assert!(
        gguf.exists(),
        "{} missing (set COG_SMOLLM2_GGUF)",
        gguf.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("smollm2");
    let t = Instant::now();
    build(&BuildRequest {
        input: gguf,
        output: dir.clone(),
        dtype: Some(Dtype::Fp16),
        quant: Some(QuantArg::None),
        force: false,
        prune: None,
        command: vec!["engine cuda test".into()],
    })
    .unwrap_or_else(|e| panic!("compiling SmolLM2: {e}"));
    eprintln!(
        "compiled SmolLM2 fp16 in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let g = Generator::load(&dir, &EngineOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let first_load = t.elapsed();
    assert!(
        matches!(
            g.loaded_from(),
            LoadedFrom::Original {
                cache_written: Some(_)
            }
        ),
        "{:?}",
        g.loaded_from()
    );
    let out = g
        .generate(
            &chat("What is the capital of France?", 64),
            &mut |_| {},
            &|| false,
        )
        .unwrap();
    eprintln!(
        "SmolLM2 fp16 CUDA answer: {:?} tokens {:?} metrics {:?}",
        out.text, out.token_ids, out.metrics
    );
    assert!(out.text.contains("Paris"), "{:?}", out.text);
    let golden: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root().join("weights/fixtures/smollm2_gguf.json")).unwrap(),
    )
    .unwrap();
    let want: Vec<u32> = golden["generated"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    eprintln!(
        "greedy tokens equal transformers' fp32 golden: {}",
        out.token_ids[..] == want[..want.len() - 1]
    );
    // A second request on the same generator: the KV buffer is rebuilt, so the answer repeats.
    let again = g
        .generate(
            &chat("What is the capital of France?", 64),
            &mut |_| {},
            &|| false,
        )
        .unwrap();
    assert_eq!(again.token_ids, out.token_ids);
    let long = g
        .generate(
            &chat("Write a long story about a dragon who learns to cook.", 400),
            &mut |_| {},
            &|| false,
        )
        .unwrap();
    eprintln!(
        "SmolLM2 fp16 CUDA long: {} tokens, ttft {:.2} ms, {:.0} tok/s",
        long.metrics.output_token_count,
        long.metrics.time_to_first_token * 1e3,
        long.metrics.tokens_per_second
    );
    // The same with decode steps replayed as a CUDA graph: identical tokens, faster decode.
    let graph_opts = EngineOptions {
        session: SessionOptions {
            cuda_graph: true,
            ..Default::default()
        },
        ..Default::default()
    };
    let gg = Generator::load(&dir, &graph_opts).unwrap_or_else(|e| panic!("cuda graph load: {e}"));
    for round in 0..2 {
        let a = gg
            .generate(
                &chat("What is the capital of France?", 64),
                &mut |_| {},
                &|| false,
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            a.token_ids, out.token_ids,
            "CUDA graph decode, request {round}"
        );
    }
    let long_g = gg
        .generate(
            &chat("Write a long story about a dragon who learns to cook.", 400),
            &mut |_| {},
            &|| false,
        )
        .unwrap();
    eprintln!(
        "SmolLM2 fp16 CUDA graph long: {} tokens, ttft {:.2} ms, {:.0} tok/s; same tokens as without graph: {}",
        long_g.metrics.output_token_count, long_g.metrics.time_to_first_token * 1e3, long_g.metrics.tokens_per_second, long_g.token_ids == long.token_ids
    );
    drop(gg);
    drop(g);
    let t = Instant::now();
    let g = Generator::load(&dir, &EngineOptions::default()).unwrap();
    let second_load = t.elapsed();
    assert!(
        matches!(g.loaded_from(), LoadedFrom::Cache(_)),
        "{:?}",
        g.loaded_from()
    );
    let cached = g
        .generate(
            &chat("What is the capital of France?", 64),
            &mut |_| {},
            &|| false,
        )
        .unwrap();
    assert_eq!(
        cached.token_ids, out.token_ids,
        "the cached optimised graph gives the same answer"
    );
    eprintln!(
        "load: first {:.0} ms (optimise + write cache), second {:.0} ms (from cache)",
        first_load.as_secs_f64() * 1e3,
        second_load.as_secs_f64() * 1e3
    );
}
