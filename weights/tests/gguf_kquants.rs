//! GGUF dequantisation against gguf-py (weights/reference/gguf_kquants_golden.py): every block
//! type bit for bit on random and quantiser-made blocks, and every tensor of the real
//! Gemma-3-270M Q4_K_M GGUF (ignored unless that file is present: run with `--ignored` after
//! scripts/setup.d/weights-gemma3-270m).

mod common;

use cog_weights::gguf::dequant::dequantize;
use cog_weights::gguf::reader::{GgmlType, Gguf};
use common::*;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::PathBuf;

const ALL: [GgmlType; 14] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Bf16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
    GgmlType::Q8K,
];

fn ty(name: &str) -> GgmlType {
    *ALL.iter()
        .find(|t| t.name() == name)
        .unwrap_or_else(|| panic!("unknown ggml type {name}"))
}

fn json(name: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixture(name)).unwrap()).unwrap()
}

#[test]
fn blocks_match_gguf_py_bit_for_bit() {
    let g = json("gguf_kquants.json");
    let mut seen = Vec::new();
    for case in g["cases"].as_array().unwrap() {
        let name = case["type"].as_str().unwrap();
        let bytes = hex::decode(case["bytes"].as_str().unwrap()).unwrap();
        let want: Vec<u32> = hex::decode(case["f32le"].as_str().unwrap())
            .unwrap()
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let mut out = Vec::new();
        dequantize(ty(name), &bytes, &mut out);
        assert_eq!(out.len(), want.len(), "{name}: element count");
        let how = case["how"].as_str().unwrap();
        for (i, (a, b)) in out.iter().zip(&want).enumerate() {
            assert_eq!(
                a.to_bits(),
                *b,
                "{name} ({how}) element {i}: {a} vs gguf-py {}",
                f32::from_bits(*b)
            );
        }
        seen.push(format!("{name} ({how})"));
    }
    eprintln!("bit-exact: {}", seen.join(", "));
    for t in ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q5_0", "Q5_1"] {
        assert!(
            seen.iter().any(|s| s.starts_with(&format!("{t} "))),
            "{t} has no golden"
        );
    }
}

fn gemma3_270m() -> PathBuf {
    let p = std::env::var_os("COG_GEMMA3_270M_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate_dir().join("../.cache/gemma3-270m/gemma-3-270m-q4_k_m.gguf"));
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup.d/weights-gemma3-270m, or set COG_GEMMA3_270M_GGUF",
        p.display()
    );
    p
}

fn sha256_f32le(v: &[f32]) -> String {
    let mut h = Sha256::new();
    for x in v {
        h.update(x.to_le_bytes());
    }
    hex::encode(h.finalize())
}

/// Every tensor of the real file dequantises to finite values of the right count; one tensor of
/// each type (and the embedding's first 64 rows) hashes the same as gguf-py's dequantisation.
#[test]
#[ignore = "needs the Gemma-3-270M GGUF (scripts/setup.d/weights-gemma3-270m)"]
fn gemma3_270m_gguf_dequantises_like_gguf_py() {
    let path = gemma3_270m();
    let file = std::fs::File::open(&path).unwrap();
    // SAFETY: read-only test input.
    let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
    let gguf = Gguf::parse(&path, &map).unwrap();
    let golden = json("gemma3_270m_gguf.json");

    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for (name, info) in &gguf.tensors {
        *counts.entry(info.ty.name().to_string()).or_default() += 1;
        let (per, size) = info.ty.block();
        // 65536 blocks at a time, so the 167M-value embedding never sits in memory at once.
        let (mut total, mut out) = (0usize, Vec::new());
        for bytes in map[info.start..info.end].chunks(size << 16) {
            out.clear();
            dequantize(info.ty, bytes, &mut out);
            assert!(
                out.iter().all(|v| v.is_finite()),
                "{name}: non-finite value"
            );
            total += out.len();
        }
        assert_eq!(
            total,
            info.shape.iter().product::<usize>(),
            "{name}: element count"
        );
        assert_eq!(total % per, 0);
    }
    eprintln!("{} tensors by type: {counts:?}", gguf.tensors.len());
    let want: BTreeMap<String, u64> = golden["types"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .collect();
    assert_eq!(counts, want, "tensor types");

    for t in golden["tensors"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap();
        let info = &gguf.tensors[name];
        assert_eq!(ty(t["type"].as_str().unwrap()), info.ty, "{name}: type");
        let shape: Vec<usize> = t["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(info.shape, shape, "{name}: shape");
        let bytes = match t["rows"].as_u64() {
            Some(rows) => {
                let (per, size) = info.ty.block();
                &map[info.start..info.start + rows as usize * shape[1] / per * size]
            }
            None => &map[info.start..info.end],
        };
        let mut out = Vec::new();
        dequantize(info.ty, bytes, &mut out);
        assert_eq!(
            sha256_f32le(&out),
            t["sha256_f32le"].as_str().unwrap(),
            "{name} ({:?}): dequantised values differ from gguf-py's",
            info.ty
        );
        eprintln!(
            "{name} {} {:?}: same as gguf-py",
            info.ty.name(),
            info.shape
        );
    }
}

/// The real file through `gguf::gemma3`: the config equals the one transformers' GGUF loader
/// derives, and tensors under Hugging Face names (norms with llama.cpp's +1 taken off) hash the
/// same as transformers' state dict.
#[test]
#[ignore = "needs the Gemma-3-270M GGUF (scripts/setup.d/weights-gemma3-270m)"]
fn gemma3_270m_gguf_as_hf_checkpoint_matches_transformers() {
    use cog_weights::checkpoint::TensorSource;
    let (config, src) = cog_weights::gguf::gemma3::open(&gemma3_270m()).unwrap();
    let golden = json("gemma3_270m_gguf.json");
    let tf = &golden["transformers"];
    for (k, want) in tf["config"].as_object().unwrap() {
        assert_eq!(&config[k], want, "config.{k}");
    }
    assert_eq!(config["model_type"], "gemma3_text");
    for (name, want) in tf["tensors_sha256_f32le"].as_object().unwrap() {
        let t = src.get(name).unwrap();
        assert_eq!(
            sha256_f32le(&t.data),
            want.as_str().unwrap(),
            "{name}: differs from transformers' tensor"
        );
    }
    // Tied head, and the multimodal checkpoint's prefix resolves to the same tensors.
    assert!(!src.contains("lm_head.weight"));
    assert_eq!(
        src.get("language_model.model.layers.3.input_layernorm.weight")
            .unwrap(),
        src.get("model.layers.3.input_layernorm.weight").unwrap()
    );
    eprintln!(
        "config and {} tensors match transformers",
        tf["tensors_sha256_f32le"].as_object().unwrap().len()
    );
}
