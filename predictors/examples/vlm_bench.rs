//! Gemma 3 vision benchmark for the GPU machine (issue 5): compiles a Gemma3ForConditionalGeneration
//! checkpoint in each configuration and measures each folder in a fresh process of this binary:
//! cold start (process start → ready, first and cached), image encode time (vision graph), time to
//! first token for one 896×896 image + a text prompt (encode + prefill + first token, as a request sees
//! it), greedy decode tokens/s (EOS ignored), peak device memory (nvidia-smi).
//!
//!     cargo build --release -p cog-predictors --example vlm_bench
//!     vlm_bench --checkpoint CKPT --configs bf16,int8,int8-s50c --json out.jsonl
//!     vlm_bench --check weights/fixtures/gemma3     # bf16 on this provider vs transformers' goldens
//!
//! Configurations: bf16; int8 (`--quant rtn8`); int8-s50c (int8 after 50 % structured pruning of the
//! MLP channels the filter map allows, compacted). Prompt ids are built directly (the random model
//! needs no real vocabulary): `<bos>`, the user turn with `<start_of_image>` + 256 image tokens +
//! `<end_of_image>` and TEXT word ids, then the model turn, as Gemma3Processor lays it out.

use clap::Parser;
use cog_predictors::engine::llm::{
    EngineOptions, GenerateRequest, Generator, Prompt, SamplingConfig,
};
use cog_predictors::engine::ort_env::SessionOptions;
use cog_predictors::engine::vision::{PixelValues, VisionModel};
use cog_weights::arch::Dtype;
use cog_weights::build::{build, BuildRequest};
use cog_weights::format::DecoderConfig;
use cog_weights::prune::source::{PruneMethod, PruneRequest};
use cog_weights::quant::QuantArg;
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

#[path = "common/bench.rs"]
mod bench;
use bench::{folder_bytes, last_json, ready_seconds, VramSampler};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    #[arg(long, default_value = "/tmp/vlm-bench")]
    work: PathBuf,
    #[arg(long, default_value = "bf16,int8,int8-s50c")]
    configs: String,
    #[arg(long, default_value_t = 64)]
    text_tokens: usize,
    #[arg(long, default_value_t = 128)]
    decode_tokens: usize,
    #[arg(long)]
    json: Option<PathBuf>,
    /// Build this tiny fixture (weights/fixtures/gemma3) in bf16 and compare with its goldens.
    #[arg(long)]
    check: Option<PathBuf>,
    #[arg(long)]
    measure: Option<PathBuf>,
    #[arg(long)]
    load_only: bool,
}

fn request(dir: &Path, args: &Args, max_new_tokens: usize) -> (GenerateRequest, PixelValues) {
    let engine: DecoderConfig =
        serde_json::from_slice(&std::fs::read(dir.join("engine.json")).unwrap()).unwrap();
    let v = engine.vision.expect("a vision graph");
    let image = engine
        .embed
        .and_then(|e| e.image_token_id)
        .expect("image token");
    let mut ids = vec![2, 105, 2364, 107, 108, 255_999];
    ids.extend(std::iter::repeat_n(image, v.mm_tokens_per_image));
    ids.extend([256_000, 108]);
    ids.extend((0..args.text_tokens as u32).map(|i| 1000 + (i * 7919) % 29000));
    ids.extend([106, 107, 105, 4368, 107]);
    let n = v.image_size;
    let data = (0..3 * n * n)
        .map(|i| ((i * 2654435761usize) % 2001) as f32 / 1000.0 - 1.0)
        .collect();
    let req = GenerateRequest {
        prompt: Prompt::Tokens {
            text: String::new(),
            ids,
        },
        max_new_tokens,
        sampling: SamplingConfig::default(),
        skip_special_tokens: true,
        ignore_eos: true,
    };
    (
        req,
        PixelValues {
            shape: [3, n, n],
            data,
        },
    )
}

fn load(dir: &Path) -> (Generator, VisionModel) {
    let engine: DecoderConfig =
        serde_json::from_slice(&std::fs::read(dir.join("engine.json")).unwrap()).unwrap();
    let vision = VisionModel::load(dir, &engine.vision.unwrap(), &SessionOptions::default())
        .unwrap_or_else(|e| panic!("vision: {e}"));
    let g = Generator::load(dir, &EngineOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    (g, vision)
}

fn measure(dir: &Path, args: &Args) {
    let mut vram = VramSampler::start();
    let (g, vision) = load(dir);
    println!("ready");
    if args.load_only {
        return;
    }
    let (req1, pixels) = request(dir, args, 1);
    let (req_n, _) = request(dir, args, args.decode_tokens + 1);
    let mut encode_ms = Vec::new();
    let mut ttft_ms = Vec::new();
    let run = |req: &GenerateRequest| {
        let t = Instant::now();
        let f = vision.encode(&pixels).unwrap();
        let enc = t.elapsed().as_secs_f64();
        let out = g
            .generate_with_images(req, Some(&f), &mut |_| {}, &|| false)
            .unwrap();
        (enc, out.metrics)
    };
    run(&req1);
    for _ in 0..5 {
        let (enc, m) = run(&req1);
        encode_ms.push(enc * 1e3);
        ttft_ms.push((enc + m.time_to_first_token) * 1e3);
    }
    let decode: Vec<f64> = (0..3).map(|_| run(&req_n).1.tokens_per_second).collect();
    println!(
        "{}",
        json!({"encode_ms": encode_ms, "ttft_ms": ttft_ms, "decode_tok_s": decode,
               "prompt_tokens": prompt_len(&req1), "peak_vram_gb": vram.peak_gb()})
    );
}

fn prompt_len(req: &GenerateRequest) -> usize {
    match &req.prompt {
        Prompt::Tokens { ids, .. } => ids.len(),
        _ => 0,
    }
}

fn compile(ckpt: &Path, out: &Path, config: &str) {
    let (quant, prune) = match config {
        "bf16" => (QuantArg::None, None),
        "int8" => (QuantArg::Rtn8, None),
        "int8-s50c" => (
            QuantArg::Rtn8,
            Some(PruneRequest {
                method: PruneMethod::Structured,
                sparsity: 0.5,
                gradual_steps: 10,
                compact: true,
                filter_map: None,
            }),
        ),
        other => panic!("unknown configuration {other}"),
    };
    build(&BuildRequest {
        input: ckpt.to_path_buf(),
        output: out.to_path_buf(),
        dtype: Some(Dtype::Bf16),
        quant: Some(quant),
        force: true,
        prune,
        command: vec!["vlm_bench".into(), config.into()],
    })
    .unwrap_or_else(|e| panic!("compiling {config}: {e}"));
}

fn child(dir: &Path, load_only: bool, args: &Args) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.arg("--measure").arg(dir);
    c.args(["--text-tokens", &args.text_tokens.to_string()]);
    c.args(["--decode-tokens", &args.decode_tokens.to_string()]);
    if load_only {
        c.arg("--load-only");
    }
    c.stdout(Stdio::piped()).stderr(Stdio::inherit());
    c
}

/// bf16 on this provider against transformers' fp32 goldens of the tiny fixture.
fn check(fixture: &Path, work: &Path) {
    let dir = work.join("check-bf16");
    compile(fixture, &dir, "bf16");
    let v: serde_json::Map<String, serde_json::Value> =
        (0..272).map(|i| (format!("t{i}"), json!(i))).collect();
    let tok = json!({"version": "1.0", "added_tokens": [], "normalizer": null,
        "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": v, "unk_token": "t0"}});
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
    let golden: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture.join("golden.json")).unwrap()).unwrap();
    let f = |k: &str| -> Vec<f64> {
        golden[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    let (g, vision) = load(&dir);
    let n = golden["pixel_values_shape"][2].as_u64().unwrap() as usize;
    let pixels = PixelValues {
        shape: [3, n, n],
        data: f("pixel_values").iter().map(|&x| x as f32).collect(),
    };
    let feats = vision.encode(&pixels).unwrap();
    let (_, rows) = feats.try_extract_tensor::<half::bf16>().unwrap();
    let want = f("image_features");
    let peak = want.iter().fold(0f64, |m, x| m.max(x.abs()));
    let diff = rows
        .iter()
        .zip(&want)
        .map(|(a, b)| (a.to_f64() - b).abs())
        .fold(0f64, f64::max);
    let ids: Vec<u32> = f("input_ids").iter().map(|&x| x as u32).collect();
    let expected: Vec<u32> = f("generated").iter().map(|&x| x as u32).collect();
    let req = GenerateRequest {
        prompt: Prompt::Tokens {
            text: String::new(),
            ids,
        },
        max_new_tokens: expected.len(),
        sampling: SamplingConfig::default(),
        skip_special_tokens: false,
        ignore_eos: true,
    };
    let out = g
        .generate_with_images(&req, Some(&feats), &mut |_| {}, &|| false)
        .unwrap();
    let same = out
        .token_ids
        .iter()
        .zip(&expected)
        .take_while(|(a, b)| a == b)
        .count();
    println!(
        "{}",
        json!({"check": "gemma3 fixture bf16", "feature_max_abs_diff": diff, "feature_peak": peak,
               "greedy_leading_equal": same, "greedy_len": expected.len(),
               "tokens": out.token_ids, "expected": expected})
    );
}

fn main() {
    let args = Args::parse();
    if let Some(dir) = &args.measure {
        return measure(dir, &args);
    }
    if let Some(fixture) = &args.check {
        return check(fixture, &args.work);
    }
    let ckpt = args.checkpoint.clone().expect("--checkpoint");
    let mut out = args.json.as_ref().map(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .unwrap()
    });
    for config in args.configs.split(',') {
        let dir = args.work.join(config);
        let t = Instant::now();
        compile(&ckpt, &dir, config);
        let compile_s = t.elapsed().as_secs_f64();
        let first = ready_seconds(child(&dir, true, &args));
        let cached = ready_seconds(child(&dir, true, &args));
        let mut m = last_json(child(&dir, false, &args));
        let obj = m.as_object_mut().unwrap();
        obj.insert("config".into(), json!(config));
        obj.insert("compile_s".into(), json!(compile_s));
        obj.insert("folder_gb".into(), json!(folder_bytes(&dir) as f64 / 1e9));
        obj.insert("ready_first_s".into(), json!(first));
        obj.insert("ready_cached_s".into(), json!(cached));
        let line = m.to_string();
        println!("{line}");
        if let Some(f) = out.as_mut() {
            writeln!(f, "{line}").unwrap();
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
