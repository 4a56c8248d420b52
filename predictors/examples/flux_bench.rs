//! FLUX transformer benchmark for the GPU machine (issue 6): compiles a diffusers `transformer/`
//! folder (made on the device by `predictors/fixtures/bench/flux_bench.py`: FLUX.1-dev's full width,
//! a slice of its depth) in each configuration, with LoRA slots on every block's q/k/v (and the
//! double blocks' output projections), and measures each in a fresh process of this binary: session
//! creation (first: optimise + cache; then cached), one denoising step (a transformer forward at
//! SIZE×SIZE, 512 text tokens, batch 1), the LoRA switch (rebinding the scale vector), and peak
//! device memory (nvidia-smi).
//!
//!     flux_bench --transformer DIR --configs bf16-onnx23,int8-onnx23 --json out.jsonl
//!
//! A configuration is `<bf16|int8|int4>-<plain|onnx23|mhafp16>`.

use clap::Parser;
use cog_predictors::engine::ort_env::{runtime, SessionOptions};
use cog_weights::arch::flux::{
    build_transformer, AttentionKind, LoraSlotSpec, RopeKind, TransformerEngine, TransformerOptions,
};
use cog_weights::arch::Dtype;
use cog_weights::quant::QuantArg;
use half::bf16;
use ort::value::{DynValue, Tensor};
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

#[path = "common/bench.rs"]
mod bench;
use bench::{folder_bytes, last_json, VramSampler};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    transformer: Option<PathBuf>,
    #[arg(long, default_value = "/tmp/flux-bench")]
    work: PathBuf,
    #[arg(long, default_value = "bf16-onnx23,int8-onnx23")]
    configs: String,
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Slot rank of the LoRA branches (two LoRAs of rank/2 each).
    #[arg(long, default_value_t = 64)]
    lora_rank: usize,
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long)]
    measure: Option<PathBuf>,
}

fn options(config: &str, spec: LoraSlotSpec) -> TransformerOptions {
    let (q, a) = config.split_once('-').expect("config like bf16-onnx23");
    let mut o = TransformerOptions::new(Dtype::Bf16);
    o.blocks = match q {
        "bf16" => QuantArg::None,
        "int8" => QuantArg::Rtn8,
        "int4" => QuantArg::Rtn4,
        other => panic!("unknown quantisation {other}"),
    }
    .scheme();
    o.attention = match a {
        "plain" => AttentionKind::Plain,
        "onnx23" => AttentionKind::Onnx23,
        "mhafp16" => AttentionKind::MultiHeadFp16,
        other => panic!("unknown attention {other}"),
    };
    o.rope = RopeKind::Fused;
    o.lora = Some(spec);
    o
}

fn lora_spec(dir: &Path, rank: usize) -> LoraSlotSpec {
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let n = |k: &str| cfg[k].as_u64().unwrap() as usize;
    let mut modules = std::collections::BTreeSet::new();
    for i in 0..n("num_layers") {
        for m in ["to_q", "to_k", "to_v", "to_out.0"] {
            modules.insert(format!("transformer_blocks.{i}.attn.{m}"));
        }
    }
    for i in 0..n("num_single_layers") {
        for m in ["to_q", "to_k", "to_v"] {
            modules.insert(format!("single_transformer_blocks.{i}.attn.{m}"));
        }
    }
    LoraSlotSpec { rank, modules }
}

fn bf16_tensor(shape: Vec<usize>, seed: u64, scale: f32) -> DynValue {
    let n: usize = shape.iter().product();
    let mut s = seed | 1;
    let data: Vec<bf16> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            bf16::from_f32(((s % 2001) as f32 / 1000.0 - 1.0) * scale)
        })
        .collect();
    Tensor::from_array((shape, data)).unwrap().into_dyn()
}

fn f32_tensor(shape: Vec<usize>, value: f32) -> DynValue {
    let n: usize = shape.iter().product();
    Tensor::from_array((shape, vec![value; n]))
        .unwrap()
        .into_dyn()
}

fn measure(dir: &Path, args: &Args) {
    let mut vram = VramSampler::start();
    let rt = runtime().unwrap();
    let engine: TransformerEngine =
        serde_json::from_slice(&std::fs::read(dir.join("transformer.json")).unwrap()).unwrap();
    let graph = dir.join(&engine.graph);
    let opts = SessionOptions::default();
    let t = Instant::now();
    let (mut session, _) = rt.session(&graph, &opts).unwrap_or_else(|e| panic!("{e}"));
    let session_s = t.elapsed().as_secs_f64();
    let c = &engine.config;
    let io = &engine.io;
    let n_img = (args.size / 16) * (args.size / 16);
    let mut binding = session.create_binding().unwrap();
    let mut keep = Vec::new();
    let mut bind = |name: &str, v: DynValue, b: &mut ort::session::IoBinding| {
        b.bind_input(name, &v).unwrap();
        keep.push(v);
    };
    bind(
        &io.hidden_states,
        bf16_tensor(vec![1, n_img, c.in_channels], 1, 1.0),
        &mut binding,
    );
    bind(
        &io.encoder_hidden_states,
        bf16_tensor(vec![1, 512, c.joint_attention_dim], 2, 1.0),
        &mut binding,
    );
    bind(
        &io.pooled_projections,
        bf16_tensor(vec![1, c.pooled_projection_dim], 3, 1.0),
        &mut binding,
    );
    bind(&io.timestep, f32_tensor(vec![1], 0.5), &mut binding);
    if let Some(g) = &io.guidance {
        bind(g, f32_tensor(vec![1], 3.5), &mut binding);
    }
    bind(&io.img_ids, f32_tensor(vec![n_img, 3], 0.0), &mut binding);
    bind(&io.txt_ids, f32_tensor(vec![512, 3], 0.0), &mut binding);
    let lora = engine.lora.as_ref().expect("built with LoRA slots");
    for (i, m) in lora.modules.iter().enumerate() {
        let r = lora.rank;
        bind(
            &m.a_t,
            bf16_tensor(vec![m.in_features, r], 10 + i as u64, 0.01),
            &mut binding,
        );
        bind(
            &m.b_t,
            bf16_tensor(vec![r, m.out_features], 5000 + i as u64, 0.01),
            &mut binding,
        );
    }
    let scales = |first: bool| -> DynValue {
        let r = lora.rank;
        let v: Vec<bf16> = (0..r)
            .map(|j| bf16::from_f32(if (j < r / 2) == first { 1.0 } else { 0.0 }))
            .collect();
        Tensor::from_array((vec![r], v)).unwrap().into_dyn()
    };
    let mut current = scales(true);
    binding.bind_input(&lora.scales, &current).unwrap();
    binding
        .bind_output_to_device(&io.sample, session.allocator().memory_info())
        .unwrap();
    let step = |session: &mut ort::session::Session, b: &ort::session::IoBinding| {
        let t = Instant::now();
        let out = session.run_binding(b).unwrap();
        out.keys().count();
        b.synchronize_outputs().unwrap();
        t.elapsed().as_secs_f64() * 1e3
    };
    for _ in 0..3 {
        step(&mut session, &binding);
    }
    let step_ms: Vec<f64> = (0..5).map(|_| step(&mut session, &binding)).collect();
    // Switching style: a new scale vector, nothing else rebound, nothing rebuilt.
    let mut switch_us = Vec::new();
    let mut after_switch_ms = Vec::new();
    for k in 0..4 {
        let t = Instant::now();
        let next = scales(k % 2 == 1);
        binding.bind_input(&lora.scales, &next).unwrap();
        current = next;
        switch_us.push(t.elapsed().as_secs_f64() * 1e6);
        after_switch_ms.push(step(&mut session, &binding));
    }
    drop(current);
    println!(
        "{}",
        json!({"session_s": session_s, "step_ms": step_ms, "lora_switch_us": switch_us,
               "step_after_switch_ms": after_switch_ms, "n_img": n_img,
               "peak_vram_gb": vram.peak_gb(), "attention": engine.attention})
    );
}

fn main() {
    let args = Args::parse();
    if let Some(dir) = &args.measure {
        return measure(dir, &args);
    }
    let src = args.transformer.clone().expect("--transformer");
    let mut out = args.json.as_ref().map(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .unwrap()
    });
    for config in args.configs.split(',') {
        let dir = args.work.join(config);
        std::fs::create_dir_all(&dir).unwrap();
        let t = Instant::now();
        build_transformer(
            &src,
            &dir,
            &options(config, lora_spec(&src, args.lora_rank)),
        )
        .unwrap_or_else(|e| panic!("compiling {config}: {e}"));
        let compile_s = t.elapsed().as_secs_f64();
        let run = || {
            let mut c = Command::new(std::env::current_exe().unwrap());
            c.arg("--measure")
                .arg(&dir)
                .args(["--size", &args.size.to_string()])
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            last_json(c)
        };
        // First: the optimised-model cache is written; second: read.
        let first = run();
        let mut m = run();
        let obj = m.as_object_mut().unwrap();
        obj.insert("config".into(), json!(config));
        obj.insert("compile_s".into(), json!(compile_s));
        obj.insert("session_first_s".into(), first["session_s"].clone());
        obj.insert("folder_gb".into(), json!(folder_bytes(&dir) as f64 / 1e9));
        let line = m.to_string();
        println!("{line}");
        if let Some(f) = out.as_mut() {
            writeln!(f, "{line}").unwrap();
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
