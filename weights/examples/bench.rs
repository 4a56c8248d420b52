//! Compile-time and peak-memory benchmark on a SmolLM3-3B-shaped random checkpoint.
//!
//! ```text
//! cargo run --release -p cog-weights --example bench -- [--layers 36] [--dir /tmp/cogrs-bench] \
//!     [--configs fp16,rtn4,hqq4,hqq8]
//! ```
//! Makes (once) a bf16 checkpoint with SmolLM3-3B's shapes (hidden 2048, 16/4 heads, head_dim
//! 128, intermediate 11008, vocab 128256, tied embeddings, NoPE every 4th layer) and random
//! weights, sharded at 2 GB with an index like the real release; then compiles it once per
//! configuration in a child process (so each peak RSS, VmHWM, is its own) and prints a table:
//! wall time, CPU time (user + system, all threads: the number that does not depend on what else
//! the machine runs), peak RSS, output size, and peak RSS relative to the checkpoint.

use cog_weights::arch::Dtype;
use cog_weights::build::{build, BuildRequest};
use cog_weights::quant::QuantArg;
use half::bf16;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

const HIDDEN: usize = 2048;
const HEADS: usize = 16;
const KV_HEADS: usize = 4;
const HEAD_DIM: usize = 128;
const INTER: usize = 11008;
const VOCAB: usize = 128256;
const SHARD_BYTES: usize = 2 << 30;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = PathBuf::from(arg(&args, "--dir").unwrap_or_else(|| "/tmp/cogrs-bench".into()));
    let layers: usize = arg(&args, "--layers").map_or(36, |v| v.parse().expect("--layers N"));
    let ckpt = dir.join(format!("smollm3-3b-shaped-{layers}l"));
    if args.iter().any(|a| a == "--quant-only") {
        quant_only();
        return;
    }
    if let Some(cfg) = arg(&args, "--child") {
        child(&ckpt, &dir, &cfg);
        return;
    }
    let configs = arg(&args, "--configs").unwrap_or_else(|| "fp16,rtn4,hqq4,hqq8".into());
    if !ckpt.join("config.json").exists() {
        let t = Instant::now();
        make_checkpoint(&ckpt, layers);
        eprintln!(
            "made checkpoint {} in {:.1} s",
            ckpt.display(),
            t.elapsed().as_secs_f64()
        );
    }
    let ckpt_bytes = dir_bytes(&ckpt);
    println!(
        "checkpoint: {layers} layers, {:.2} GiB bf16",
        gib(ckpt_bytes)
    );
    println!(
        "| config | compile s (wall) | CPU s | peak RSS GiB | RSS / checkpoint | output GiB |"
    );
    println!("|---|---|---|---|---|---|");
    let exe = std::env::current_exe().unwrap();
    for cfg in configs.split(',') {
        let out = std::process::Command::new(&exe)
            .args([
                "--dir",
                dir.to_str().unwrap(),
                "--layers",
                &layers.to_string(),
                "--child",
                cfg,
            ])
            .output()
            .expect("spawn child");
        if !out.status.success() {
            eprintln!("{cfg}: failed: {}", String::from_utf8_lossy(&out.stderr));
            continue;
        }
        let line = String::from_utf8_lossy(&out.stdout);
        let f: Vec<f64> = line
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect();
        println!(
            "| {cfg} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} |",
            f[0],
            f[3],
            gib(f[1] as u64),
            f[1] / ckpt_bytes as f64,
            gib(f[2] as u64)
        );
    }
}

/// Times the quantisers alone on one gate_up-sized matrix (2·11008 × 2048), single run each.
fn quant_only() {
    use cog_weights::checkpoint::Tensor;
    let (n, k) = (2 * INTER, HIDDEN);
    let mut rng = 0x9E3779B97F4A7C15u64;
    let data = (0..n * k)
        .map(|_| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            ((rng >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.07
        })
        .collect();
    let w = Tensor::new(vec![n, k], data);
    for q in [
        QuantArg::Rtn4,
        QuantArg::Rtn8,
        QuantArg::Hqq4,
        QuantArg::Hqq8,
    ] {
        let t = Instant::now();
        let _ = cog_weights::quant::quantize(&w, q.scheme());
        let s = t.elapsed().as_secs_f64();
        println!(
            "{q:?}: {s:.2} s for {:.1} M weights ({:.1} ns/weight)",
            (n * k) as f64 / 1e6,
            s * 1e9 / (n * k) as f64
        );
    }
}

/// Compiles one configuration; prints `seconds peak_rss_bytes output_bytes`.
fn child(ckpt: &Path, dir: &Path, cfg: &str) {
    let (dtype, quant) = match cfg {
        "fp16" => (Dtype::Fp16, QuantArg::None),
        "bf16" => (Dtype::Bf16, QuantArg::None),
        "rtn4" => (Dtype::Fp16, QuantArg::Rtn4),
        "rtn8" => (Dtype::Fp16, QuantArg::Rtn8),
        "hqq4" => (Dtype::Fp16, QuantArg::Hqq4),
        "hqq8" => (Dtype::Fp16, QuantArg::Hqq8),
        other => panic!("unknown config {other}"),
    };
    let out = dir.join(format!("out-{cfg}"));
    let t = Instant::now();
    build(&BuildRequest {
        input: ckpt.to_path_buf(),
        output: out.clone(),
        dtype: Some(dtype),
        quant: Some(quant),
        force: true,
        prune: None,
        command: vec!["bench".into(), cfg.into()],
    })
    .expect("build");
    let secs = t.elapsed().as_secs_f64();
    let bytes = dir_bytes(&out);
    std::fs::remove_dir_all(&out).unwrap();
    println!("{secs} {} {bytes} {}", peak_rss(), cpu_seconds());
}

/// User + system CPU time of this process (all threads), from /proc/self/stat in clock ticks
/// (USER_HZ, 100 on Linux): on a shared machine this is the load-independent cost.
fn cpu_seconds() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = s.rsplit_once(')').map_or("", |r| r.1);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

fn peak_rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

fn gib(b: u64) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

/// Tensor names and shapes of the checkpoint, in file order.
fn tensors(layers: usize) -> Vec<(String, Vec<usize>)> {
    let mut v = vec![("model.embed_tokens.weight".to_string(), vec![VOCAB, HIDDEN])];
    for i in 0..layers {
        let p = format!("model.layers.{i}");
        for (n, s) in [
            ("self_attn.q_proj.weight", vec![HEADS * HEAD_DIM, HIDDEN]),
            ("self_attn.k_proj.weight", vec![KV_HEADS * HEAD_DIM, HIDDEN]),
            ("self_attn.v_proj.weight", vec![KV_HEADS * HEAD_DIM, HIDDEN]),
            ("self_attn.o_proj.weight", vec![HIDDEN, HEADS * HEAD_DIM]),
            ("mlp.gate_proj.weight", vec![INTER, HIDDEN]),
            ("mlp.up_proj.weight", vec![INTER, HIDDEN]),
            ("mlp.down_proj.weight", vec![HIDDEN, INTER]),
            ("input_layernorm.weight", vec![HIDDEN]),
            ("post_attention_layernorm.weight", vec![HIDDEN]),
        ] {
            v.push((format!("{p}.{n}"), s));
        }
    }
    v.push(("model.norm.weight".to_string(), vec![HIDDEN]));
    v
}

fn make_checkpoint(dir: &Path, layers: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let config = serde_json::json!({
        "architectures": ["SmolLM3ForCausalLM"], "model_type": "smollm3",
        "hidden_size": HIDDEN, "intermediate_size": INTER, "num_hidden_layers": layers,
        "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "vocab_size": VOCAB,
        "rms_norm_eps": 1e-6, "rope_theta": 5000000.0, "max_position_embeddings": 65536,
        "tie_word_embeddings": true, "no_rope_layer_interval": 4, "hidden_act": "silu",
        "bos_token_id": null, "eos_token_id": 128012, "pad_token_id": 128004
    });
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec_pretty(&config).unwrap(),
    )
    .unwrap();
    // Group tensors into shards of about SHARD_BYTES.
    let mut shards: Vec<Vec<(String, Vec<usize>)>> = vec![Vec::new()];
    let mut size = 0;
    for t in tensors(layers) {
        let b = t.1.iter().product::<usize>() * 2;
        if size + b > SHARD_BYTES && !shards.last().unwrap().is_empty() {
            shards.push(Vec::new());
            size = 0;
        }
        size += b;
        shards.last_mut().unwrap().push(t);
    }
    let n = shards.len();
    let mut weight_map = serde_json::Map::new();
    let mut rng = 0x9E3779B97F4A7C15u64;
    for (si, shard) in shards.iter().enumerate() {
        let name = format!("model-{:05}-of-{n:05}.safetensors", si + 1);
        let mut header = serde_json::Map::new();
        let mut off = 0usize;
        for (t, s) in shard {
            let b = s.iter().product::<usize>() * 2;
            header.insert(
                t.clone(),
                serde_json::json!({"dtype": "BF16", "shape": s, "data_offsets": [off, off + b]}),
            );
            off += b;
            weight_map.insert(t.clone(), serde_json::json!(name));
        }
        let h = serde_json::to_vec(&header).unwrap();
        let mut f = std::io::BufWriter::with_capacity(
            8 << 20,
            std::fs::File::create(dir.join(&name)).unwrap(),
        );
        f.write_all(&(h.len() as u64).to_le_bytes()).unwrap();
        f.write_all(&h).unwrap();
        for (t, s) in shard {
            let count: usize = s.iter().product();
            let norm = t.contains("norm");
            let mut buf = Vec::with_capacity(count * 2);
            for _ in 0..count {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                // Uniform in [-0.035, 0.035): std 0.02 like the usual init; norms near 1.
                let u = (rng >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                let v = if norm { 1.0 + 0.1 * u } else { 0.07 * u };
                buf.extend_from_slice(&bf16::from_f32(v).to_le_bytes());
            }
            f.write_all(&buf).unwrap();
        }
        f.flush().unwrap();
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_vec_pretty(&index).unwrap(),
    )
    .unwrap();
}
