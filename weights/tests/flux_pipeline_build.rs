//! `cogrs weights build` on a diffusers FLUX pipeline folder (the tiny one of
//! weights/fixtures/flux_pipeline + flux_encoders, real tokenizers from .cache/diffusion) with the
//! deployment defaults (bf16, int8 transformer blocks and T5): every graph, the packed LoRAs and
//! the tokenizer files land in one folder whose manifest verifies, and `pipeline.json` describes
//! them; a broken LoRA or a missing tokenizer fails the build and leaves no folder behind.

mod common;

use cog_weights::arch::flux_pipeline::{build_folder, LoraArg, PipelineDescription};
use cog_weights::build::{build, BuildRequest};
use common::*;
use std::path::{Path, PathBuf};

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
}

fn assemble(dir: &Path) {
    let (fix, enc) = (fixture("flux_pipeline"), fixture("flux_encoders"));
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
    let cache = crate_dir().join("../.cache/diffusion");
    copy(
        &cache.join("clip/bpe_simple_vocab_16e6.txt"),
        &dir.join("tokenizer/merges.txt"),
    );
    copy(
        &cache.join("t5/tokenizer.json"),
        &dir.join("tokenizer_2/tokenizer.json"),
    );
}

fn request(input: PathBuf, output: PathBuf) -> BuildRequest {
    BuildRequest {
        input,
        output,
        dtype: None,
        quant: None,
        force: false,
        prune: None,
        command: vec!["test".into()],
    }
}

fn loras() -> Vec<LoraArg> {
    let f = fixture("flux_pipeline");
    [
        "open-image-preferences=".to_string() + f.join("lora_a.safetensors").to_str().unwrap(),
        f.join("lora_b.safetensors").to_str().unwrap().to_string(),
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect()
}

#[test]
fn flux_pipeline_folder_with_defaults_and_loras() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    assemble(&src);
    let out = work.path().join("out");
    let summary = build_folder(&request(src.clone(), out.clone()), &loras()).expect("build");
    let m = cog_weights::verify::verify(&out).expect("manifest verifies");
    assert_eq!(
        (m.architecture.as_str(), m.dtype.as_str()),
        ("flux", "bf16")
    );
    assert_eq!(m.quantization["transformer_blocks"], "rtn8-b32");
    assert!(!summary.reports.is_empty(), "int8 reports");
    for f in [
        "pipeline.json",
        "transformer.json",
        "transformer.onnx",
        "transformer.onnx.data",
        "clip.onnx",
        "t5.onnx",
        "vae_decoder.onnx",
        "vae_encoder.onnx",
        "clip_merges.txt",
        "t5_tokenizer.json",
        "lora_slots.safetensors",
    ] {
        assert!(m.files.contains_key(f), "{f} not in the manifest");
    }
    let d: PipelineDescription =
        serde_json::from_slice(&std::fs::read(out.join("pipeline.json")).unwrap()).unwrap();
    assert_eq!(
        (d.t5.dtype.as_str(), d.clip.vocab_size, d.t5.vocab_size),
        ("bfloat16", 1000, 512)
    );
    assert_eq!(
        (d.vae.scaling_factor, d.vae.shift_factor, d.vae.scale_factor),
        (0.3611, 0.1159, 8)
    );
    // No scheduler config in this folder: FLUX.1-dev's values.
    assert_eq!((d.scheduler.base_shift, d.scheduler.max_shift), (0.5, 1.15));
    let lora = d.lora.expect("packed LoRAs");
    // Ranks 4 + 2; the second is named after its file.
    assert_eq!(lora.rank, 6);
    let names: Vec<_> = lora
        .loras
        .iter()
        .map(|l| (l.name.as_str(), l.segment, l.modules))
        .collect();
    assert_eq!(
        names,
        [("open-image-preferences", [0, 4], 5), ("lora_b", [4, 6], 4)]
    );

    // The plain entry point dispatches on model_index.json (no LoRAs: no slots).
    let plain = work.path().join("plain");
    build(&request(src.clone(), plain.clone())).expect("plain build");
    let d: PipelineDescription =
        serde_json::from_slice(&std::fs::read(plain.join("pipeline.json")).unwrap()).unwrap();
    assert!(d.lora.is_none() && !plain.join("lora_slots.safetensors").exists());
}

#[test]
fn broken_inputs_fail_without_leaving_a_folder() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    assemble(&src);
    let bad = work.path().join("bad.safetensors");
    std::fs::write(&bad, b"not a safetensors file").unwrap();
    let out = work.path().join("out");
    let arg = LoraArg {
        name: "ghibsky".into(),
        path: bad,
    };
    let e = build_folder(&request(src.clone(), out.clone()), &[arg]).unwrap_err();
    assert!(e.to_string().contains("bad.safetensors"), "{e}");
    assert!(!out.exists());
    std::fs::remove_file(src.join("tokenizer_2/tokenizer.json")).unwrap();
    let e = build_folder(&request(src, out.clone()), &[]).unwrap_err();
    assert!(e.to_string().contains("tokenizer.json"), "{e}");
    assert!(!out.exists());
}
