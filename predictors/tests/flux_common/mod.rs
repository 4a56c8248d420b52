//! The tiny FLUX pipeline the FLUX tests share: a diffusers-layout folder assembled from the
//! fixtures (weights/fixtures/flux_pipeline: transformer, LoRAs, scheduler; flux_encoders: CLIP,
//! T5, VAE) plus the real tokenizers from .cache/diffusion (scripts/setup), compiled with
//! `cog_weights::arch::flux_pipeline::build_folder`.
#![allow(dead_code)]

use cog_weights::arch::flux_pipeline::{build_folder, LoraArg};
use cog_weights::arch::Dtype;
use cog_weights::build::BuildRequest;
use cog_weights::quant::QuantArg;
use std::path::{Path, PathBuf};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn fixture() -> PathBuf {
    root().join("weights/fixtures/flux_pipeline")
}

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(from, to)
        .unwrap_or_else(|e| panic!("{} → {}: {e}", from.display(), to.display()));
}

/// Writes the diffusers pipeline folder into `dir`.
pub fn assemble(dir: &Path) {
    let fix = fixture();
    let enc = root().join("weights/fixtures/flux_encoders");
    let cache = root().join(".cache/diffusion");
    for f in ["config.json", "diffusion_pytorch_model.safetensors"] {
        copy(
            &fix.join("transformer").join(f),
            &dir.join("transformer").join(f),
        );
        copy(&enc.join("vae").join(f), &dir.join("vae").join(f));
    }
    for c in ["text_encoder", "text_encoder_2"] {
        for f in ["config.json", "model.safetensors"] {
            copy(&enc.join(c).join(f), &dir.join(c).join(f));
        }
    }
    copy(&fix.join("model_index.json"), &dir.join("model_index.json"));
    copy(
        &fix.join("scheduler_config.json"),
        &dir.join("scheduler/scheduler_config.json"),
    );
    // open_clip's BPE file has the same layout as CLIP's merges.txt (a header line, then merges).
    copy(
        &cache.join("clip/bpe_simple_vocab_16e6.txt"),
        &dir.join("tokenizer/merges.txt"),
    );
    copy(
        &cache.join("t5/tokenizer.json"),
        &dir.join("tokenizer_2/tokenizer.json"),
    );
}

/// The fixture's two LoRAs under the trigger-set names the predictors look for.
pub fn loras() -> Vec<LoraArg> {
    vec![
        LoraArg {
            name: "open-image-preferences".into(),
            path: fixture().join("lora_a.safetensors"),
        },
        LoraArg {
            name: "ghibsky".into(),
            path: fixture().join("lora_b.safetensors"),
        },
    ]
}

/// Assembles the pipeline under `work` and compiles it to `work/compiled`.
pub fn compile(work: &Path, dtype: Dtype, quant: QuantArg) -> PathBuf {
    let src = work.join("pipeline");
    assemble(&src);
    let out = work.join("compiled");
    let req = BuildRequest {
        input: src,
        output: out.clone(),
        dtype: Some(dtype),
        quant: Some(quant),
        force: true,
        prune: None,
        command: vec!["test".into()],
    };
    build_folder(&req, &loras()).expect("build the FLUX folder");
    out
}

/// A little-endian f32 file of the fixture.
pub fn f32_file(name: &str) -> Vec<f32> {
    std::fs::read(fixture().join(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}
