//! bf16 FLUX text encoders and VAE on the session's provider (the GPU machine: ONNX Runtime's CPU
//! provider has no bf16 kernels for them) against the fp32 goldens of the tiny fixtures
//! (weights/fixtures/flux_encoders, made by weights/reference/flux_encoders_golden.py):
//!
//!     flux_bf16_check weights/fixtures/flux_encoders
//!
//! Prints one JSON line per graph: relative RMS error of the bf16 output against transformers' /
//! diffusers' fp32 output (bf16 keeps 8 bits of mantissa: ~0.4 % per rounding, a few roundings deep).

use cog_predictors::engine::ort_env::{runtime, SessionOptions};
use cog_weights::arch::{clip, t5, vae, Dtype};
use cog_weights::quant::Scheme;
use half::bf16;
use ort::value::{DynValue, Tensor};
use serde_json::{json, Value};
use std::path::Path;

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn f32_file(dir: &Path, v: &Value) -> (Vec<usize>, Vec<f32>) {
    let shape = v["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    let bytes = std::fs::read(dir.join(v["file"].as_str().unwrap())).unwrap();
    let data = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (shape, data)
}

fn ids(v: &Value) -> DynValue {
    let rows: Vec<Vec<i64>> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_i64().unwrap())
                .collect()
        })
        .collect();
    let shape = vec![rows.len(), rows[0].len()];
    Tensor::from_array((shape, rows.concat()))
        .unwrap()
        .into_dyn()
}

fn bf16_input((shape, data): (Vec<usize>, Vec<f32>)) -> DynValue {
    let d: Vec<bf16> = data.iter().map(|&x| bf16::from_f32(x)).collect();
    Tensor::from_array((shape, d)).unwrap().into_dyn()
}

/// Runs `graph` with one input and returns the named output as f32.
fn run(graph: &Path, input: (&str, DynValue), output: &str) -> Vec<f32> {
    let rt = runtime().unwrap();
    let opts = SessionOptions {
        no_cache: true,
        ..Default::default()
    };
    let (mut s, _) = rt.session(graph, &opts).unwrap_or_else(|e| panic!("{e}"));
    let out = s
        .run(ort::inputs![input.0 => input.1])
        .unwrap_or_else(|e| panic!("{}: {e}", graph.display()));
    let v = &out[output];
    match v.try_extract_tensor::<bf16>() {
        Ok((_, d)) => d.iter().map(|x| x.to_f32()).collect(),
        Err(_) => v.try_extract_tensor::<f32>().unwrap().1.to_vec(),
    }
}

fn report(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum();
    let den: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
    let finite = got.iter().all(|x| x.is_finite());
    println!(
        "{}",
        json!({"graph": what, "dtype": "bf16", "rel_rms_vs_fp32_golden": (num / den).sqrt(),
               "all_finite": finite, "ep": runtime().unwrap().ep.name()})
    );
}

fn main() {
    let fix = std::path::PathBuf::from(std::env::args().nth(1).expect("fixture dir"));
    let g: Value =
        serde_json::from_slice(&std::fs::read(fix.join("golden.json")).unwrap()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let o = out.path();
    let b = clip::build_dir(&fix.join("text_encoder"), o, Dtype::Bf16).unwrap();
    let got = run(
        &o.join(&b.graph),
        ("input_ids", ids(&g["clip"]["input_ids"])),
        "pooled_output",
    );
    report("clip", &got, &floats(&g["clip"]["pooled_output"]));

    let b = t5::build_dir(&fix.join("text_encoder_2"), o, Dtype::Bf16, Scheme::None).unwrap();
    let got = run(
        &o.join(&b.graph),
        ("input_ids", ids(&g["t5"]["input_ids"])),
        "last_hidden_state",
    );
    report("t5", &got, &f32_file(&fix, &g["t5"]["last_hidden_state"]).1);

    let b = vae::build_decoder_dir(&fix.join("vae"), o, Dtype::Bf16).unwrap();
    let latent = bf16_input(f32_file(&fix, &g["vae"]["latent"]));
    let got = run(&o.join(&b.graph), ("latent", latent), "image");
    report("vae_decoder", &got, &f32_file(&fix, &g["vae"]["decoded"]).1);

    let b = vae::build_encoder_dir(&fix.join("vae"), o, Dtype::Bf16).unwrap();
    let image = bf16_input(f32_file(&fix, &g["vae"]["image"]));
    let got = run(&o.join(&b.graph), ("image", image), "latent_mean");
    report(
        "vae_encoder",
        &got,
        &f32_file(&fix, &g["vae"]["latent_mean"]).1,
    );
}
