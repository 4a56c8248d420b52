//! Shared by the FLUX transformer tests: the golden (weights/reference/flux_transformer_golden.py),
//! its inputs as ORT values, compiling the fixture, running a session, LoRA slot bindings.

#![allow(dead_code)]

use crate::common::{fixture, max_abs_diff};
use cog_weights::arch::flux::lora;
use cog_weights::arch::flux::slots::Slots;
use cog_weights::arch::flux::{build_transformer, TransformerEngine, TransformerOptions};
use ort::session::Session;
use ort::value::{DynValue, Tensor};
use std::path::PathBuf;

pub const TOL: f32 = 1e-4;

pub struct Golden {
    v: serde_json::Value,
}

impl Golden {
    pub fn load() -> Golden {
        let p = fixture("flux_transformer").join("golden.json");
        Golden {
            v: serde_json::from_slice(&std::fs::read(p).expect("golden.json")).expect("json"),
        }
    }
    pub fn floats(v: &serde_json::Value) -> Vec<f32> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    }
    pub fn input(&self, k: &str) -> Vec<f32> {
        Self::floats(&self.v["inputs"][k])
    }
    pub fn sample(&self, case: &str) -> Vec<f32> {
        Self::floats(&self.v["cases"][case]["sample"])
    }
    pub fn torch_frequencies(&self) -> Vec<f32> {
        Self::floats(&self.v["time_proj_frequencies"])
    }
    pub fn scales(&self, case: &str) -> Vec<f32> {
        Self::floats(&self.v["cases"][case]["scales"])
    }
}

pub fn t(shape: &[i64], data: Vec<f32>) -> DynValue {
    Tensor::from_array((shape.to_vec(), data))
        .unwrap()
        .into_dyn()
}

/// The model inputs of the golden (batch 2, 12 image tokens, 5 text tokens).
pub fn model_inputs(g: &Golden) -> Vec<(String, DynValue)> {
    vec![
        (
            "hidden_states".into(),
            t(&[2, 12, 16], g.input("hidden_states")),
        ),
        (
            "encoder_hidden_states".into(),
            t(&[2, 5, 32], g.input("encoder_hidden_states")),
        ),
        (
            "pooled_projections".into(),
            t(&[2, 16], g.input("pooled_projections")),
        ),
        ("timestep".into(), t(&[2], g.input("timestep"))),
        ("guidance".into(), t(&[2], g.input("guidance"))),
        ("img_ids".into(), t(&[12, 3], g.input("img_ids"))),
        ("txt_ids".into(), t(&[5, 3], g.input("txt_ids"))),
    ]
}

pub fn compile(opts: &TransformerOptions) -> (tempfile::TempDir, PathBuf, TransformerEngine) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().to_path_buf();
    let built = build_transformer(&fixture("flux_transformer"), &out, opts)
        .unwrap_or_else(|e| panic!("building the transformer: {e}"));
    let on_disk: TransformerEngine =
        serde_json::from_slice(&std::fs::read(out.join("transformer.json")).unwrap()).unwrap();
    assert_eq!(on_disk, built.engine);
    for (f, e) in &built.files {
        assert_eq!(std::fs::metadata(out.join(f)).unwrap().len(), e.size, "{f}");
    }
    (tmp, out, built.engine)
}

pub fn run(
    s: &mut Session,
    mut inputs: Vec<(String, DynValue)>,
    extra: Vec<(String, DynValue)>,
) -> Vec<f32> {
    inputs.extend(extra);
    let out = s.run(inputs).expect("run");
    let (shape, data) = out["sample"].try_extract_tensor::<f32>().unwrap();
    assert_eq!(&**shape, &[2, 12, 16]);
    data.to_vec()
}

pub fn check(what: &str, got: &[f32], want: &[f32], tol: f32) {
    let d = max_abs_diff(got, want);
    eprintln!("{what}: max abs diff {d:e}");
    assert!(d <= tol, "{what}: max abs diff {d} > {tol}");
}

pub fn peak(v: &[f32]) -> f32 {
    v.iter().fold(0f32, |m, x| m.max(x.abs()))
}

pub fn load_lora(name: &str) -> lora::Lora {
    lora::load(&fixture("flux_transformer").join(name)).expect("LoRA file")
}

/// Slot inputs for `slots` over every module of the graph (zeros where `slots` has none).
pub fn slot_inputs(
    engine: &TransformerEngine,
    slots: &Slots,
    scales: &[f32],
) -> Vec<(String, DynValue)> {
    let io = engine.lora.as_ref().expect("a LoRA graph");
    slots
        .bindings(io, scales)
        .expect("bindings")
        .into_iter()
        .map(|b| {
            let shape: Vec<i64> = b.shape.iter().map(|&d| d as i64).collect();
            (b.name, t(&shape, b.data))
        })
        .collect()
}
