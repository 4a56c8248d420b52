//! Engine measurements on a compiled decoder folder (ignored by default; for the GPU machine):
//!     COG_BENCH_DIR=<compiled folder> [COG_BENCH_CUDA_GRAPH=1] [COG_BENCH_CHECKPOINT=<HF dir or .gguf> COG_BENCH_QUANT=none|rtn4|rtn8|hqq4|hqq8]
//!     cargo test --release -p cog-predictors --test engine_bench -- --ignored --nocapture
//! With a checkpoint the folder is compiled first (fp16). Prints one JSON line: cold load (optimise + cache
//! write), cached load, TTFT for a 512-token prompt, and greedy decode tokens/s over 256 tokens (EOS ignored,
//! so lengths are fixed).

use cog_predictors::engine::llm::{
    EngineOptions, GenerateRequest, Generator, Prompt, SamplingConfig,
};
use cog_predictors::engine::ort_env::{runtime, SessionOptions};
use cog_weights::arch::Dtype;
use cog_weights::build::{build, BuildRequest};
use cog_weights::quant::QuantArg;
use std::path::PathBuf;
use std::time::Instant;

#[test]
#[ignore = "a measurement, not a check: run explicitly (see the file's header)"]
fn bench() {
    let dir = PathBuf::from(std::env::var("COG_BENCH_DIR").expect("COG_BENCH_DIR"));
    let mut compile_s = None;
    if let Ok(ckpt) = std::env::var("COG_BENCH_CHECKPOINT") {
        let quant = match std::env::var("COG_BENCH_QUANT")
            .as_deref()
            .unwrap_or("none")
        {
            "none" => QuantArg::None,
            "rtn4" => QuantArg::Rtn4,
            "rtn8" => QuantArg::Rtn8,
            "hqq4" => QuantArg::Hqq4,
            "hqq8" => QuantArg::Hqq8,
            q => panic!("COG_BENCH_QUANT={q}"),
        };
        let t = Instant::now();
        build(&BuildRequest {
            input: ckpt.into(),
            output: dir.clone(),
            dtype: Some(Dtype::Fp16),
            quant: Some(quant),
            force: true,
            prune: None,
            command: vec!["engine bench".into()],
        })
        .unwrap_or_else(|e| panic!("compiling: {e}"));
        compile_s = Some(t.elapsed().as_secs_f64());
    }
    let rt = runtime().unwrap_or_else(|e| panic!("{e}"));
    let cuda_graph = std::env::var("COG_BENCH_CUDA_GRAPH").is_ok_and(|v| v == "1");
    let opts = EngineOptions {
        session: SessionOptions {
            cuda_graph,
            ..Default::default()
        },
        ..Default::default()
    };
    let t = Instant::now();
    let g = Generator::load(&dir, &opts).unwrap_or_else(|e| panic!("{e}"));
    let cold_load = t.elapsed().as_secs_f64();
    drop(g);
    let t = Instant::now();
    let g = Generator::load(&dir, &opts).unwrap();
    let cached_load = t.elapsed().as_secs_f64();

    // A raw prompt of exactly 512 tokens.
    let words =
        "the quick brown fox jumps over the lazy dog while a small model counts tokens ".repeat(80);
    let ids = g.encode(&words).unwrap();
    let prompt = g.tokenizer().decode(&ids[..512], false).unwrap();
    let n_prompt = g.encode(&prompt).unwrap().len();
    let req = |max_new_tokens| GenerateRequest {
        prompt: Prompt::Raw(prompt.clone()),
        max_new_tokens,
        sampling: SamplingConfig::default(),
        skip_special_tokens: false,
        ignore_eos: true,
    };
    let mut ttft = f64::MAX;
    for _ in 0..3 {
        ttft = ttft.min(
            g.generate(&req(1), &mut |_| {}, &|| false)
                .unwrap()
                .metrics
                .time_to_first_token,
        );
    }
    let out = g.generate(&req(257), &mut |_| {}, &|| false).unwrap();
    if let Ok(prefix) = std::env::var("COG_BENCH_PROFILE") {
        // A separate profiled generator: one prefill and 32 decode steps, then the per-node trace.
        let popts = EngineOptions {
            session: SessionOptions {
                profile: Some(prefix.into()),
                ..opts.session.clone()
            },
            warm_up: true,
        };
        let pg = Generator::load(&dir, &popts).unwrap();
        pg.generate(&req(33), &mut |_| {}, &|| false).unwrap();
        println!("profile: {}", pg.end_profiling().unwrap());
    }
    assert_eq!(out.metrics.output_token_count, 257);
    println!(
        "{}",
        serde_json::json!({
            "dir": dir.display().to_string(), "ep": rt.ep.name(), "cuda_graph": cuda_graph, "compile_s": compile_s,
            "cold_load_s": cold_load, "cached_load_s": cached_load, "prompt_tokens": n_prompt,
            "ttft_ms": ttft * 1e3, "decode_tokens": 256, "decode_tok_s": out.metrics.tokens_per_second,
        })
    );
}
