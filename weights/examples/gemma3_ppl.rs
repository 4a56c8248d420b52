//! Perplexity of the real Gemma-3-270M (GGUF Q4_K_M, dequantised) under each quantisation and
//! pruning configuration of `cogrs weights build`, on CPU with ONNX Runtime; prints the markdown
//! table of BENCHMARKS.md ("Gemma-3-270M: perplexity under quantisation and pruning").
//!
//! ```text
//! nice cargo run --release -p cog-weights --example gemma3_ppl -- \
//!     [--gguf .cache/gemma3-270m/gemma-3-270m-q4_k_m.gguf] [--text weights/fixtures/ppl_text.txt] \
//!     [--only fp32,rtn8,magnitude-25-map,...]
//! ```
//! The text (weights/fixtures/ppl_text.txt, 718 tokens with `<bos>`) is the Gettysburg Address
//! (Bliss copy, 1863) followed by the first two paragraphs of the US Declaration of Independence
//! (1776), both public domain. Every configuration is compiled with fp32 compute (ORT's CPU
//! provider has no bf16 kernels for these graphs, so fp32 is the CPU stand-in for the bf16
//! deployment), run teacher-forced in chunks of 128 tokens with the KV cache, and compared with
//! the fp32 build position by position ([`cog_weights::smoke::Compare`]: top-1 agreement and mean
//! KL(fp32 ‖ config)). Configurations run one after another; each folder is deleted after use.
//! "fp32 (bf16 weights)": the same, from a bf16 safetensors checkpoint written from the GGUF (every
//! tensor rounded to bf16 as the released checkpoint stores them), compiled with fp32 compute: the
//! weight half of the bf16 deployment's rounding (the activations stay fp32).
//! "with map": the built-in filter map (weights/recipes/gemma3.prune.json); "all linears":
//! weights/recipes/gemma3.prune.all-linears.json (every decoder-layer linear, still never
//! embeddings, lm_head or norms).

#[path = "../tests/common/mod.rs"]
mod common;

use cog_weights::arch::Dtype;
use cog_weights::prune::source::{PruneMethod, PruneRequest};
use cog_weights::quant::QuantArg;
use cog_weights::smoke::Compare;
use common::{compile_with, crate_dir, Decoder, Embedder};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

const CHUNK: usize = 128;

struct Config {
    name: String,
    /// Compile the bf16 checkpoint instead of the GGUF.
    bf16: bool,
    quant: QuantArg,
    prune: Option<PruneRequest>,
}

fn configs() -> Vec<Config> {
    let mut v = vec![
        Config {
            name: "fp32".into(),
            bf16: false,
            quant: QuantArg::None,
            prune: None,
        },
        Config {
            name: "fp32 (bf16 weights)".into(),
            bf16: true,
            quant: QuantArg::None,
            prune: None,
        },
        Config {
            name: "rtn8".into(),
            bf16: false,
            quant: QuantArg::Rtn8,
            prune: None,
        },
    ];
    let all = crate_dir().join("recipes/gemma3.prune.all-linears.json");
    for (method, compact, label) in [
        (PruneMethod::Magnitude, false, "magnitude"),
        (PruneMethod::Gradual, false, "gradual"),
        (PruneMethod::Structured, false, "structured"),
        (PruneMethod::Structured, true, "structured-compact"),
    ] {
        for pct in [25, 50] {
            for (map, tag) in [(None, "map"), (Some(all.clone()), "all")] {
                v.push(Config {
                    name: format!("{label}-{pct}-{tag}"),
                    bf16: false,
                    quant: QuantArg::None,
                    prune: Some(PruneRequest {
                        method,
                        sparsity: pct as f64 / 100.0,
                        gradual_steps: 4,
                        compact,
                        filter_map: map,
                    }),
                });
            }
        }
    }
    v
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn folder_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

/// Teacher-forced logits, chunk by chunk: `each(chunk_start, rows)`.
fn run(dir: &Path, ids: &[i64], mut each: impl FnMut(usize, Vec<Vec<f32>>)) {
    let mut emb = Embedder::open(dir);
    let mut dec = Decoder::open(dir);
    for (c, chunk) in ids.chunks(CHUNK).enumerate() {
        let x = emb.embed(chunk, &[]).unwrap();
        each(c * CHUNK, dec.step_embeds(&x, chunk.len()));
    }
}

/// A Hugging Face folder (config.json, bf16 model.safetensors, tokenizer files) from the GGUF.
fn bf16_checkpoint(gguf: &Path, dir: &Path) -> PathBuf {
    use cog_weights::checkpoint::TensorSource;
    let (cfg, src) = cog_weights::gguf::gemma3::open(gguf).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    for (name, bytes) in cog_weights::gguf::spm::gemma_files(src.gguf(), &[1]).unwrap() {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    let layers = cfg["num_hidden_layers"].as_u64().unwrap();
    let mut names = vec![
        "model.embed_tokens.weight".to_string(),
        "model.norm.weight".into(),
    ];
    for i in 0..layers {
        for n in [
            "input_layernorm",
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "self_attn.q_norm",
            "self_attn.k_norm",
            "post_attention_layernorm",
            "pre_feedforward_layernorm",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
            "post_feedforward_layernorm",
        ] {
            names.push(format!("model.layers.{i}.{n}.weight"));
        }
    }
    // safetensors by hand: u64 header length, JSON header, then the data.
    let (mut header, mut data) = (serde_json::Map::new(), Vec::new());
    for n in &names {
        let t = src.get(n).unwrap();
        let start = data.len();
        for x in &t.data {
            data.extend_from_slice(&half::bf16::from_f32(*x).to_le_bytes());
        }
        header.insert(
            n.clone(),
            serde_json::json!({"dtype": "BF16", "shape": t.shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut h = serde_json::Value::Object(header).to_string().into_bytes();
    h.resize(h.len().div_ceil(8) * 8, b' ');
    let mut f = std::fs::File::create(dir.join("model.safetensors")).unwrap();
    f.write_all(&(h.len() as u64).to_le_bytes()).unwrap();
    f.write_all(&h).unwrap();
    f.write_all(&data).unwrap();
    dir.to_path_buf()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let root = crate_dir().join("..");
    let gguf = arg(&args, "--gguf")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".cache/gemma3-270m/gemma-3-270m-q4_k_m.gguf"));
    let text_path = arg(&args, "--text")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate_dir().join("fixtures/ppl_text.txt"));
    let only: Option<Vec<String>> =
        arg(&args, "--only").map(|s| s.split(',').map(str::to_string).collect());
    let text = std::fs::read_to_string(&text_path).expect("the text");

    let work = tempfile::tempdir().expect("tempdir");
    let ref_logits = work.path().join("reference.f32");
    let mut ids: Vec<i64> = Vec::new();
    let mut rows_out = Vec::new();
    for cfg in configs() {
        let is_ref = cfg.name == "fp32";
        if !is_ref && only.as_ref().is_some_and(|o| !o.contains(&cfg.name)) {
            continue;
        }
        let t0 = Instant::now();
        let input = match cfg.bf16 {
            true => bf16_checkpoint(&gguf, &work.path().join("bf16")),
            false => gguf.clone(),
        };
        let (_tmp, dir) = compile_with(&input, Dtype::Fp32, cfg.quant, cfg.prune.clone());
        if cfg.bf16 {
            std::fs::remove_dir_all(work.path().join("bf16")).unwrap();
        }
        let build_s = t0.elapsed().as_secs_f64();
        if ids.is_empty() {
            let tok = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
            let enc = tok.encode(text.as_str(), true).unwrap();
            ids = enc.get_ids().iter().map(|&i| i as i64).collect();
            eprintln!("{}: {} tokens", text_path.display(), ids.len());
        }
        let t1 = Instant::now();
        let mut cmp = Compare::default();
        if is_ref {
            let mut f = std::io::BufWriter::new(std::fs::File::create(&ref_logits).unwrap());
            run(&dir, &ids, |start, rows| {
                for (k, row) in rows.iter().enumerate() {
                    let next = ids.get(start + k + 1).map(|&t| t as u32);
                    cmp.add(row, row, next);
                    for x in row {
                        f.write_all(&x.to_le_bytes()).unwrap();
                    }
                }
            });
            f.flush().unwrap();
        } else {
            let mut f = std::io::BufReader::new(std::fs::File::open(&ref_logits).unwrap());
            run(&dir, &ids, |start, rows| {
                for (k, row) in rows.iter().enumerate() {
                    let mut buf = vec![0u8; row.len() * 4];
                    f.read_exact(&mut buf).unwrap();
                    let r: Vec<f32> = buf
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                        .collect();
                    let next = ids.get(start + k + 1).map(|&t| t as u32);
                    cmp.add(&r, row, next);
                }
            });
        }
        let eval_s = t1.elapsed().as_secs_f64();
        let m = cmp.measured();
        let (pruned, of_pruned, of_total) = match std::fs::read(dir.join("prune_report.json")) {
            Ok(b) => {
                let r: serde_json::Value = serde_json::from_slice(&b).unwrap();
                let s = &r["summary"];
                (
                    format!(
                        "{} / {}",
                        s["pruned_tensors"],
                        s["pruned_tensors"].as_u64().unwrap()
                            + s["skipped_tensors"].as_u64().unwrap()
                    ),
                    format!("{:.1} %", 100.0 * s["sparsity_of_pruned"].as_f64().unwrap()),
                    format!(
                        "{:.1} %",
                        100.0 * s["zeroed_fraction_of_total"].as_f64().unwrap()
                    ),
                )
            }
            Err(_) => ("0".into(), "–".into(), "–".into()),
        };
        let row = format!(
            "| {} | {:.3} | {:.4} | {:.4} | {} | {} | {} | {:.0} MB | {:.0} s + {:.0} s |",
            cfg.name,
            m.perplexity_optimised,
            m.top1_agreement,
            m.mean_kl,
            pruned,
            of_pruned,
            of_total,
            folder_bytes(&dir) as f64 / 1e6,
            build_s,
            eval_s
        );
        eprintln!("{row}");
        rows_out.push(row);
    }
    println!("| configuration | perplexity | top-1 agreement vs fp32 | mean KL vs fp32 (nats) | tensors pruned | sparsity of pruned | zeroed of all weights | folder | build + eval |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in rows_out {
        println!("{r}");
    }
}
