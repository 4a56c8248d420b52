//! Text-engine benchmark for the GPU machine (issue 4): compiles a checkpoint with each requested
//! quantisation, then measures each compiled folder in fresh processes of this binary:
//! cold start (process start → engine ready, with the optimised-model cache empty, then cached),
//! time to first token for a fixed-length prompt, greedy decode tokens/s (EOS ignored, so lengths are
//! fixed), decode with CUDA-graph capture, and peak device memory (nvidia-smi samples, minus the
//! memory in use before the process started).
//!
//!     cargo build --release -p cog-predictors --example llm_bench
//!     llm_bench --checkpoint CKPT --work /tmp/bench --quant fp16,rtn4,hqq4,hqq8 --json out.jsonl
//!
//! One JSON object per configuration goes to stdout (and `--json`);
//! `predictors/fixtures/bench/llm_table.py` turns them and the transformers baseline into a table.

use clap::Parser;
use cog_predictors::engine::llm::{
    EngineOptions, GenerateRequest, Generator, Prompt, SamplingConfig,
};
use cog_predictors::engine::ort_env::SessionOptions;
use cog_weights::arch::Dtype;
use cog_weights::build::{build, BuildRequest};
use cog_weights::quant::QuantArg;
use serde_json::json;

#[path = "common/bench.rs"]
mod bench;
use bench::{folder_bytes, last_json, ready_seconds, VramSampler};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

#[derive(Parser)]
struct Args {
    /// Hugging Face checkpoint folder to compile (omit with --measure).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Where compiled folders go (`<work>/<quant>`).
    #[arg(long, default_value = "/tmp/llm-bench")]
    work: PathBuf,
    /// Comma-separated: fp16, rtn4, rtn8, hqq4, hqq8.
    #[arg(long, default_value = "fp16,rtn4")]
    quant: String,
    #[arg(long, default_value_t = 512)]
    prompt_tokens: usize,
    #[arg(long, default_value_t = 256)]
    decode_tokens: usize,
    /// Append the JSON results here as well.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Delete each compiled folder once measured (for checkpoints whose folders would not all fit the disk).
    #[arg(long)]
    cleanup: bool,
    /// Internal: measure one compiled folder in this process.
    #[arg(long)]
    measure: Option<PathBuf>,
    /// Internal (with --measure): only load, report ready, and exit.
    #[arg(long)]
    load_only: bool,
}

fn main() {
    let args = Args::parse();
    if let Some(dir) = &args.measure {
        measure(dir, &args);
        return;
    }
    let ckpt = args.checkpoint.clone().expect("--checkpoint");
    let mut out = args.json.as_ref().map(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .expect("--json file")
    });
    for q in args.quant.split(',') {
        let quant = match q {
            "fp16" => QuantArg::None,
            "rtn4" => QuantArg::Rtn4,
            "rtn8" => QuantArg::Rtn8,
            "hqq4" => QuantArg::Hqq4,
            "hqq8" => QuantArg::Hqq8,
            other => panic!("unknown quantisation {other}"),
        };
        let dir = args.work.join(q);
        let t = Instant::now();
        build(&BuildRequest {
            input: ckpt.clone(),
            output: dir.clone(),
            dtype: Some(Dtype::Fp16),
            quant: Some(quant),
            force: true,
            prune: None,
            command: vec!["llm_bench".into(), q.into()],
        })
        .unwrap_or_else(|e| panic!("compiling {q}: {e}"));
        let compile_s = t.elapsed().as_secs_f64();
        let size = folder_bytes(&dir);
        // First start: no optimised-model cache yet; second: cached. Each in a fresh process.
        let cold_first = ready_seconds(child(&dir, true, &args));
        let cold_cached = ready_seconds(child(&dir, true, &args));
        let mut m = last_json(child(&dir, false, &args));
        let obj = m.as_object_mut().expect("object");
        obj.insert("quant".into(), json!(q));
        obj.insert("compile_s".into(), json!(compile_s));
        obj.insert("folder_gb".into(), json!(size as f64 / 1e9));
        obj.insert("ready_first_s".into(), json!(cold_first));
        obj.insert("ready_cached_s".into(), json!(cold_cached));
        let line = m.to_string();
        println!("{line}");
        if let Some(f) = out.as_mut() {
            writeln!(f, "{line}").expect("write --json");
        }
        if args.cleanup {
            std::fs::remove_dir_all(&dir).expect("removing the compiled folder");
        }
    }
}

fn child(dir: &Path, load_only: bool, args: &Args) -> Command {
    let mut c = Command::new(std::env::current_exe().expect("current exe"));
    c.arg("--measure")
        .arg(dir)
        .arg("--prompt-tokens")
        .arg(args.prompt_tokens.to_string())
        .arg("--decode-tokens")
        .arg(args.decode_tokens.to_string());
    if load_only {
        c.arg("--load-only");
    }
    c.stdout(Stdio::piped()).stderr(Stdio::inherit());
    c
}

fn measure(dir: &Path, args: &Args) {
    let mut vram = VramSampler::start();
    // The captured graph's KV buffer holds exactly what the runs need (the per-request path sizes its
    // own buffer the same way).
    let capacity = (args.prompt_tokens + args.decode_tokens + 2).next_power_of_two();
    let load = |cuda_graph| {
        let opts = EngineOptions {
            session: SessionOptions {
                cuda_graph,
                graph_kv_capacity: Some(capacity),
                ..Default::default()
            },
            warm_up: true,
        };
        Generator::load(dir, &opts).unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()))
    };
    let g = load(false);
    println!("ready");
    if args.load_only {
        return;
    }
    // A raw prompt of exactly `prompt_tokens` tokens.
    let words = "the quick brown fox jumps over the lazy dog while a small model counts tokens "
        .repeat(args.prompt_tokens / 8 + 8);
    let ids = g.encode(&words).expect("encode");
    let prompt = g
        .tokenizer()
        .decode(&ids[..args.prompt_tokens], false)
        .expect("decode");
    let n_prompt = g.encode(&prompt).expect("encode").len();
    let req = |max_new_tokens| GenerateRequest {
        prompt: Prompt::Raw(prompt.clone()),
        max_new_tokens,
        sampling: SamplingConfig::default(),
        skip_special_tokens: false,
        ignore_eos: true,
    };
    let run = |g: &Generator, n| {
        g.generate(&req(n), &mut |_| {}, &|| false)
            .expect("generate")
            .metrics
    };
    let ttft: Vec<f64> = (0..5).map(|_| run(&g, 1).time_to_first_token).collect();
    let decode: Vec<f64> = (0..3)
        .map(|_| run(&g, args.decode_tokens + 1).tokens_per_second)
        .collect();
    let peak = vram.peak_gb();
    drop(g);
    // CUDA-graph decode needs its own session; measured after the first one is gone.
    let graph_decode: Option<Vec<f64>> = (cog_predictors::engine::ort_env::runtime()
        .map(|rt| rt.ep.name() == "cuda")
        .unwrap_or(false))
    .then(|| {
        let g = load(true);
        (0..3)
            .map(|_| run(&g, args.decode_tokens + 1).tokens_per_second)
            .collect()
    });
    println!(
        "{}",
        json!({
            "dir": dir.display().to_string(),
            "ep": cog_predictors::engine::ort_env::runtime().map(|r| r.ep.name()).unwrap_or("?"),
            "prompt_tokens": n_prompt,
            "decode_tokens": args.decode_tokens,
            "ttft_ms": ttft.iter().map(|t| t * 1e3).collect::<Vec<_>>(),
            "decode_tok_s": decode,
            "cuda_graph_decode_tok_s": graph_decode,
            "peak_vram_gb": peak,
        })
    );
}
