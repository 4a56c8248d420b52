//! The compiled folder: deterministic bytes, manifest verification, fp16 graphs, and clear errors
//! (naming file and tensor) with no partial output left behind.

mod common;

use cog_weights::arch::Dtype;
use cog_weights::build::{build, BuildRequest};
use cog_weights::quant::QuantArg;
use cog_weights::verify::verify;
use cog_weights::Error;
use common::*;
use half::f16;
use ort::value::Tensor as OrtTensor;
use std::path::{Path, PathBuf};

fn request(input: &Path, output: &Path) -> BuildRequest {
    BuildRequest {
        input: input.to_path_buf(),
        output: output.to_path_buf(),
        dtype: Some(Dtype::Fp32),
        quant: Some(QuantArg::None),
        force: false,
        prune: None,
        command: vec!["test".into()],
    }
}

/// A writable copy of a fixture folder.
fn copy_fixture(name: &str, into: &Path) -> PathBuf {
    let dst = into.join(name);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    dst
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
}

/// Builds expecting failure; asserts nothing was left in the output's parent but `keep`.
fn build_fails(input: &Path, parent: &Path) -> Error {
    let out = parent.join("out");
    let err = build(&request(input, &out)).expect_err("build should fail");
    assert!(!out.exists(), "partial output left at {}", out.display());
    let leftovers: Vec<_> = std::fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary folders left: {leftovers:?}"
    );
    err
}

#[test]
fn output_is_deterministic_and_verifies() {
    let (_a, d1) = compile(&fixture("smollm3"), Dtype::Fp32, QuantArg::Hqq4);
    let (_b, d2) = compile(&fixture("smollm3"), Dtype::Fp32, QuantArg::Hqq4);
    for f in [
        "model.onnx",
        "model.onnx.data",
        "engine.json",
        "quantization_report.json",
    ] {
        assert_eq!(
            std::fs::read(d1.join(f)).unwrap(),
            std::fs::read(d2.join(f)).unwrap(),
            "{f} differs between two builds"
        );
    }
    let m = verify(&d1).expect("fresh folder verifies");
    assert_eq!(m.architecture, "smollm3");
    assert_eq!(m.quantization["linear"], "hqq4-g64");
    for f in [
        "model.onnx",
        "model.onnx.data",
        "engine.json",
        "generation_config.json",
    ] {
        assert!(m.files.contains_key(f), "manifest lacks {f}");
    }
    let engine: cog_weights::format::DecoderConfig =
        serde_json::from_slice(&std::fs::read(d1.join("engine.json")).unwrap()).unwrap();
    assert_eq!(
        (engine.num_layers, engine.num_heads, engine.num_kv_heads),
        (4, 4, 1)
    );
    assert_eq!(engine.tokens.eos_token_ids, vec![2]);

    // One flipped byte in the weights, an extra file, a missing file: each is reported.
    let data = d1.join("model.onnx.data");
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&data, &bytes).unwrap();
    std::fs::write(d1.join("stray.txt"), "x").unwrap();
    std::fs::remove_file(d1.join("engine.json")).unwrap();
    match verify(&d1) {
        Err(Error::Verify { problems, .. }) => {
            let all = problems.join("\n");
            assert!(all.contains("model.onnx.data: sha256"), "{all}");
            assert!(all.contains("stray.txt: not in the manifest"), "{all}");
            assert!(all.contains("engine.json: missing"), "{all}");
        }
        other => panic!("expected a verification failure, got {other:?}"),
    }
}

#[test]
fn existing_output_needs_force() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    build(&request(&fixture("llama"), &out)).unwrap();
    let err = build(&request(&fixture("llama"), &out)).unwrap_err();
    assert!(matches!(err, Error::OutputExists { .. }), "{err}");
    let mut req = request(&fixture("llama"), &out);
    req.force = true;
    req.quant = Some(QuantArg::Rtn8);
    build(&req).unwrap();
    assert_eq!(verify(&out).unwrap().quantization["linear"], "rtn8-b32");
    let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert_eq!(names.len(), 1, "only the output folder remains");
}

#[test]
fn fp16_graph_runs_close_to_fp32() {
    let g = golden("phi3");
    let (_t, dir) = compile(&fixture("phi3"), Dtype::Fp16, QuantArg::None);
    let mut s = session(&dir.join("model.onnx"));
    let n = g.prompt.len();
    let empty = |_| OrtTensor::from_array((vec![1i64, 2, 0, 16], Vec::<f16>::new())).unwrap();
    let mut inputs: Vec<(String, ort::value::DynValue)> = vec![
        (
            "input_ids".into(),
            OrtTensor::from_array((vec![1i64, n as i64], g.prompt.clone()))
                .unwrap()
                .into_dyn(),
        ),
        (
            "attention_mask".into(),
            OrtTensor::from_array((vec![1i64, n as i64], vec![1i64; n]))
                .unwrap()
                .into_dyn(),
        ),
    ];
    for i in 0..2 {
        inputs.push((format!("past_key_values.{i}.key"), empty(i).into_dyn()));
        inputs.push((format!("past_key_values.{i}.value"), empty(i).into_dyn()));
    }
    let out = s.run(inputs).unwrap();
    let (_, logits) = out["logits"].try_extract_tensor::<f16>().unwrap();
    let logits: Vec<f32> = logits.iter().map(|v| v.to_f32()).collect();
    let mut worst = 0f32;
    for t in 0..n {
        let row = &logits[t * g.vocab..(t + 1) * g.vocab];
        worst = worst.max(max_abs_diff(row, &g.logits[t]));
        assert_eq!(
            argmax(row),
            argmax(&g.logits[t]),
            "fp16 top-1 differs at {t}"
        );
    }
    eprintln!("phi3 fp16: worst abs logit diff {worst}");
    assert!(worst < 0.05, "fp16 logits off by {worst}");
}

#[test]
fn missing_config_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let src = copy_fixture("llama", tmp.path());
    std::fs::remove_file(src.join("config.json")).unwrap();
    let err = build_fails(&src, tmp.path());
    assert!(matches!(err, Error::MissingFile { .. }), "{err}");
    assert!(err.to_string().contains("config.json"), "{err}");
}

#[test]
fn unknown_architecture_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let src = copy_fixture("llama", tmp.path());
    edit_config(&src, |v| {
        v["architectures"] = serde_json::json!(["FooForCausalLM"])
    });
    let err = build_fails(&src, tmp.path());
    let msg = err.to_string();
    assert!(
        msg.contains("FooForCausalLM") && msg.contains("config.json"),
        "{msg}"
    );
}

#[test]
fn shape_mismatch_names_file_and_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let src = copy_fixture("phi3", tmp.path());
    edit_config(&src, |v| v["intermediate_size"] = serde_json::json!(100));
    let err = build_fails(&src, tmp.path());
    let msg = err.to_string();
    assert!(
        msg.contains("model.safetensors") && msg.contains("model.layers.0.mlp.gate_up_proj.weight"),
        "{msg}"
    );
}

#[test]
fn corrupt_safetensors_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let src = copy_fixture("llama", tmp.path());
    let st = src.join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    // Header length pointing past the end of the file.
    let mut bad = bytes.clone();
    bad[..8].copy_from_slice(&(bytes.len() as u64 * 2).to_le_bytes());
    std::fs::write(&st, &bad).unwrap();
    let msg = build_fails(&src, tmp.path()).to_string();
    assert!(
        msg.contains("model.safetensors") && msg.contains("header length"),
        "{msg}"
    );
    // Truncated data: the last tensor's bytes are missing.
    std::fs::write(&st, &bytes[..bytes.len() - 10]).unwrap();
    let msg = build_fails(&src, tmp.path()).to_string();
    assert!(
        msg.contains("model.safetensors") && msg.contains("beyond the end of the file"),
        "{msg}"
    );
    assert!(msg.contains("tensor \""), "names the tensor: {msg}");
}

#[test]
fn cli_build_then_verify() {
    use cog_weights::cli::{run, BuildArgs, WeightsCommand};
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    run(WeightsCommand::Build(BuildArgs {
        checkpoint: fixture("phi3"),
        output: out.clone(),
        dtype: None,
        quant: None,
        force: false,
        prune: None,
        sparsity: None,
        gradual_steps: 10,
        compact: false,
        filter_map: None,
        lora: vec![],
    }))
    .unwrap();
    // Phi-3's defaults are recorded in the manifest.
    let m = verify(&out).unwrap();
    assert_eq!(
        (m.dtype.as_str(), m.quantization["linear"].as_str()),
        ("fp16", "rtn4-b32")
    );
    run(WeightsCommand::Verify { dir: out.clone() }).unwrap();
    std::fs::write(out.join("engine.json"), "{}").unwrap();
    let err = run(WeightsCommand::Verify { dir: out })
        .unwrap_err()
        .to_string();
    assert!(err.contains("engine.json: size"), "{err}");
}

/// The phi3 fixture rewritten as two f32 shards with an index: same weights, so the compiled fp32
/// graph must be byte-identical to the one from the single f16 file.
#[test]
fn sharded_f32_checkpoint_builds_the_same_graph() {
    let tmp = tempfile::tempdir().unwrap();
    let src = copy_fixture("phi3", tmp.path());
    let st = src.join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let mut names: Vec<&String> = header.keys().filter(|k| *k != "__metadata__").collect();
    names.sort();
    let mut weight_map = serde_json::Map::new();
    for (si, part) in names.chunks(names.len().div_ceil(2)).enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", si + 1);
        let (mut head, mut data) = (serde_json::Map::new(), Vec::new());
        for name in part {
            let e = &header[*name];
            assert_eq!(e["dtype"], "F16");
            let o = e["data_offsets"].as_array().unwrap();
            let (a, b) = (
                o[0].as_u64().unwrap() as usize,
                o[1].as_u64().unwrap() as usize,
            );
            let start = data.len();
            for c in bytes[8 + n + a..8 + n + b].chunks_exact(2) {
                data.extend(f16::from_le_bytes([c[0], c[1]]).to_f32().to_le_bytes());
            }
            head.insert(
                (*name).clone(),
                serde_json::json!({"dtype": "F32", "shape": e["shape"], "data_offsets": [start, data.len()]}),
            );
            weight_map.insert((*name).clone(), serde_json::json!(file));
        }
        let h = serde_json::to_vec(&head).unwrap();
        let mut out = (h.len() as u64).to_le_bytes().to_vec();
        out.extend(h);
        out.extend(data);
        std::fs::write(src.join(&file), out).unwrap();
    }
    std::fs::remove_file(&st).unwrap();
    std::fs::write(
        src.join("model.safetensors.index.json"),
        serde_json::to_vec(&serde_json::json!({"metadata": {}, "weight_map": weight_map})).unwrap(),
    )
    .unwrap();

    let (_a, single) = compile(&fixture("phi3"), Dtype::Fp32, QuantArg::None);
    let (_b, sharded) = compile(&src, Dtype::Fp32, QuantArg::None);
    for f in ["model.onnx", "model.onnx.data", "engine.json"] {
        assert_eq!(
            std::fs::read(single.join(f)).unwrap(),
            std::fs::read(sharded.join(f)).unwrap(),
            "{f} differs"
        );
    }
    // A shard the index names but that is missing is reported by name.
    std::fs::remove_file(src.join("model-00002-of-00002.safetensors")).unwrap();
    let msg = build_fails(&src, tmp.path()).to_string();
    assert!(msg.contains("model-00002-of-00002.safetensors"), "{msg}");
}
