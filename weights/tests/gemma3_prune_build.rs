//! Pruning inside `cogrs weights build` on the tiny Gemma 3 fixture (fixtures/gemma3_text) under
//! the built-in filter map: the per-tensor report, the manifest record, what the compiled graph
//! holds (allowed tensors at the target sparsity, everything else bit-identical to the
//! checkpoint), MLP compaction that changes nothing but size, and other architectures.

mod common;

use cog_weights::arch::Dtype;
use cog_weights::checkpoint::safetensors::SafetensorsSource;
use cog_weights::checkpoint::TensorSource;
use cog_weights::format::Manifest;
use cog_weights::prune::source::{PruneMethod, PruneRequest};
use cog_weights::quant::QuantArg;
use common::*;
use std::path::Path;

const NAME: &str = "gemma3_text";

fn compile_pruned(
    quant: QuantArg,
    prune: Option<PruneRequest>,
) -> (tempfile::TempDir, std::path::PathBuf) {
    compile_with(&fixture(NAME), Dtype::Fp32, quant, prune)
}

fn zeros(v: &[f32]) -> f64 {
    v.iter().filter(|x| **x == 0.0).count() as f64 / v.len() as f64
}

fn prune_req(method: PruneMethod, sparsity: f64, compact: bool) -> Option<PruneRequest> {
    Some(PruneRequest {
        method,
        sparsity,
        gradual_steps: 3,
        compact,
        filter_map: None,
    })
}

/// Magnitude pruning at 50 % under the built-in Gemma 3 map: every q/k/v/up/down weight is reported
/// at 50 %, everything else the build read is reported skipped with the map's reason, and in the
/// compiled graph the allowed parts are half zeros while o_proj and gate_proj are bit-identical
/// to the checkpoint's.
#[test]
fn magnitude_pruning_reports_and_leaves_the_rest() {
    let (_tmp, dir) = compile_pruned(
        QuantArg::None,
        prune_req(PruneMethod::Magnitude, 0.5, false),
    );
    let report = json(&dir.join("prune_report.json"));
    assert_eq!(report["method"], "magnitude");
    assert_eq!(report["filter_map_source"], "builtin:gemma3");
    let tensors = report["tensors"].as_array().unwrap();
    let allowed = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"];
    let mut pruned = 0;
    for t in tensors {
        let name = t["name"].as_str().unwrap();
        let is_allowed = allowed.iter().any(|a| name.contains(&format!(".{a}.")));
        if is_allowed {
            pruned += 1;
            assert!(t["skipped"].is_null(), "{name} skipped: {}", t["skipped"]);
            assert!(
                (t["sparsity"].as_f64().unwrap() - 0.5).abs() < 0.01,
                "{name}: {}",
                t["sparsity"]
            );
        } else {
            assert!(t["skipped"].is_string(), "{name} should be skipped");
            assert_eq!(t["zeroed"], 0, "{name}");
        }
    }
    assert_eq!(pruned, 6 * 5);
    for n in [
        "model.embed_tokens.weight",
        "model.norm.weight",
        "model.layers.0.self_attn.o_proj.weight",
        "model.layers.3.mlp.gate_proj.weight",
        "model.layers.5.self_attn.q_norm.weight",
    ] {
        assert!(
            tensors.iter().any(|t| t["name"] == n),
            "{n} missing from the report"
        );
    }
    let m: Manifest = serde_json::from_value(json(&dir.join("manifest.json"))).unwrap();
    let rec = m.pruning.expect("manifest records pruning");
    assert_eq!(
        (rec.method.as_str(), rec.report.as_str()),
        ("magnitude", "prune_report.json")
    );
    assert_eq!(rec.pruned_tensors, 30);
    cog_weights::verify::verify(&dir).unwrap();

    // In the graph: the checkpoint's o_proj and gate_proj exactly, q/k/v and up/down half zeros.
    let src = SafetensorsSource::open_dir(&fixture(NAME)).unwrap();
    for i in 0..6 {
        let p = format!("model.layers.{i}");
        let (_, o) = initializer(
            &dir,
            "decoder.onnx",
            &format!("{p}.self_attn.o_proj.weight"),
        );
        assert_eq!(
            o,
            src.get(&format!("{p}.self_attn.o_proj.weight"))
                .unwrap()
                .transpose2()
                .data
        );
        let (dims, gu) = initializer(
            &dir,
            "decoder.onnx",
            &format!("{p}.mlp.gate_up_proj.weight"),
        );
        // Stored transposed, [hidden, 2·intermediate]: gate columns first.
        let gu = cog_weights::checkpoint::Tensor::new(dims, gu).transpose2();
        let (gate, up) = gu.data.split_at(64 * 48);
        assert_eq!(
            gate,
            &src.get(&format!("{p}.mlp.gate_proj.weight")).unwrap().data[..]
        );
        assert!((zeros(up) - 0.5).abs() < 0.01);
        let (_, qkv) = initializer(
            &dir,
            "decoder.onnx",
            &format!("{p}.self_attn.qkv_proj.weight"),
        );
        assert!((zeros(&qkv) - 0.5).abs() < 0.01);
    }
    // The pruned model still runs end to end.
    let g = golden(NAME);
    let mut emb = Embedder::open(&dir);
    let mut dec = Decoder::open(&dir);
    let x = emb.embed(&g.prompt, &[]).unwrap();
    assert!(dec
        .step_embeds(&x, g.prompt.len())
        .iter()
        .flatten()
        .all(|v| v.is_finite()));
}

/// Gradual pruning reaches the final sparsity (cubic schedule, 3 steps) and says so per tensor.
#[test]
fn gradual_pruning_reaches_the_target() {
    let (_tmp, dir) = compile_pruned(QuantArg::None, prune_req(PruneMethod::Gradual, 0.25, false));
    let report = json(&dir.join("prune_report.json"));
    assert_eq!(
        (report["method"].as_str(), report["gradual_steps"].as_u64()),
        (Some("gradual"), Some(3))
    );
    let done: Vec<f64> = report["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["skipped"].is_null())
        .map(|t| t["sparsity"].as_f64().unwrap())
        .collect();
    assert_eq!(done.len(), 30);
    assert!(done.iter().all(|s| (s - 0.25).abs() < 0.01), "{done:?}");
}

/// Structured pruning with and without compaction: compaction drops only dead MLP channels, so
/// the logits are the same (to rounding) while the MLP matrices shrink; int8 on top still builds.
#[test]
fn structured_compaction_changes_nothing_but_size() {
    let g = golden(NAME);
    let logits = |dir: &Path| {
        let mut emb = Embedder::open(dir);
        let mut dec = Decoder::open(dir);
        let x = emb.embed(&g.prompt, &[]).unwrap();
        dec.step_embeds(&x, g.prompt.len())
    };
    let (_a, plain) = compile_pruned(
        QuantArg::None,
        prune_req(PruneMethod::Structured, 0.5, false),
    );
    let (_b, compact) = compile_pruned(
        QuantArg::None,
        prune_req(PruneMethod::Structured, 0.5, true),
    );
    let (x, y) = (logits(&plain), logits(&compact));
    let worst = x
        .iter()
        .zip(&y)
        .map(|(a, b)| max_abs_diff(a, b))
        .fold(0f32, f32::max);
    assert!(worst <= 1e-5, "compaction changed logits by {worst}");
    let report = json(&compact.join("prune_report.json"));
    let comp = report["compaction"].as_array().unwrap();
    assert_eq!(comp.len(), 6);
    for c in comp {
        // up_proj lost half its rows: those channels are dead.
        assert_eq!(
            (c["intermediate"].as_u64(), c["kept"].as_u64()),
            (Some(64), Some(32)),
            "{c}"
        );
    }
    let size = |d: &Path| {
        std::fs::metadata(d.join("decoder.onnx.data"))
            .unwrap()
            .len()
    };
    assert!(size(&compact) < size(&plain));
    let (dims, _) = initializer(
        &compact,
        "decoder.onnx",
        "model.layers.0.mlp.down_proj.weight",
    );
    assert_eq!(dims, [32, 48]);
    let (_c, q8) = compile_pruned(
        QuantArg::Rtn8,
        prune_req(PruneMethod::Structured, 0.5, true),
    );
    let top: Vec<usize> = logits(&q8).iter().map(|r| argmax(r)).collect();
    eprintln!("structured 50% + compact + int8: prefill top-1 {top:?}");
}

/// The Llama-family builder prunes through the same path, but has no built-in map (one must be
/// given) and no compaction.
#[test]
fn other_architectures_need_a_filter_map() {
    let tmp = tempfile::tempdir().unwrap();
    let req = |map: Option<std::path::PathBuf>, compact: bool| {
        Some(PruneRequest {
            method: if compact {
                PruneMethod::Structured
            } else {
                PruneMethod::Magnitude
            },
            sparsity: 0.5,
            gradual_steps: 1,
            compact,
            filter_map: map,
        })
    };
    let fails = |prune: Option<PruneRequest>| {
        let out = tmp.path().join("fail");
        let e = cog_weights::build::build(&cog_weights::build::BuildRequest {
            input: fixture("llama"),
            output: out.clone(),
            dtype: Some(Dtype::Fp32),
            quant: Some(QuantArg::None),
            force: false,
            prune,
            command: vec![],
        })
        .expect_err("should fail")
        .to_string();
        assert!(!out.exists());
        e
    };
    let e = fails(req(None, false));
    assert!(e.contains("--filter-map"), "{e}");
    let map = tmp.path().join("llama.prune.json");
    std::fs::write(
        &map,
        r#"{"model": "test", "allow": [{"pattern": "*.q_proj.weight", "why": "test"}], "deny": []}"#,
    )
    .unwrap();
    let e = fails(req(Some(map.clone()), true));
    assert!(e.contains("--compact"), "{e}");

    let (_t, dir) = compile_with(
        &fixture("llama"),
        Dtype::Fp32,
        QuantArg::None,
        req(Some(map), false),
    );
    let report = json(&dir.join("prune_report.json"));
    assert_eq!(report["filter_map"], "test");
    for t in report["tensors"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap();
        if name.ends_with(".q_proj.weight") {
            assert_eq!(t["sparsity"], 0.5, "{name}");
        } else {
            assert!(
                t["skipped"]
                    .as_str()
                    .unwrap()
                    .contains("not in the filter map"),
                "{name}"
            );
        }
    }
    let m: Manifest = serde_json::from_value(json(&dir.join("manifest.json"))).unwrap();
    assert_eq!(m.pruning.unwrap().pruned_tensors, 2);
}
