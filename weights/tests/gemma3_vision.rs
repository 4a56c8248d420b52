//! `vision.onnx` (SigLIP tower + Gemma 3 projector) against transformers on the tiny random
//! `Gemma3ForConditionalGeneration` in fixtures/gemma3 (weights/reference/gemma3_golden.py):
//! image features for a fixed image, fp32 within 1e-4 and int8 weight-only within a bound stated
//! below; and the config parsing of the real model's vision fields.

mod common;

use cog_weights::arch::siglip::{self, Gemma3Config, VisionOptions};
use cog_weights::arch::Dtype;
use cog_weights::checkpoint::safetensors::SafetensorsSource;
use cog_weights::quant::Scheme;
use common::*;
use ort::value::Tensor;
use std::path::Path;

struct Golden {
    pixels: Vec<f32>,
    pixel_shape: Vec<i64>,
    features: Vec<f32>,
    feature_shape: Vec<i64>,
}

fn golden() -> Golden {
    let p = fixture("gemma3").join("golden.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    let floats = |k: &str| -> Vec<f32> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    };
    let ints = |k: &str| -> Vec<i64> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect()
    };
    Golden {
        pixels: floats("pixel_values"),
        pixel_shape: ints("pixel_values_shape"),
        features: floats("image_features"),
        feature_shape: ints("image_features_shape"),
    }
}

/// Builds vision.onnx from the fixture into a temp folder.
fn build(dtype: Dtype, linear: Scheme) -> (tempfile::TempDir, siglip::VisionBuild) {
    build_from("gemma3", dtype, linear)
}

fn build_from(
    name: &str,
    dtype: Dtype,
    linear: Scheme,
) -> (tempfile::TempDir, siglip::VisionBuild) {
    let dir = fixture(name);
    let cfg_path = dir.join("config.json");
    let spec = Gemma3Config::load(&cfg_path)
        .unwrap()
        .vision_spec(&cfg_path)
        .unwrap();
    let src = SafetensorsSource::open_dir(&dir).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let built = siglip::build_vision(&spec, &src, tmp.path(), &VisionOptions { dtype, linear })
        .unwrap_or_else(|e| panic!("building vision.onnx: {e}"));
    (tmp, built)
}

/// Runs the graph on `batch` copies of the golden image; returns (shape, features).
fn run(dir: &Path, g: &Golden, batch: usize) -> (Vec<i64>, Vec<f32>) {
    let mut shape = g.pixel_shape.clone();
    shape[0] = batch as i64;
    let pixels: Vec<f32> = (0..batch).flat_map(|_| g.pixels.iter().copied()).collect();
    run_batch(
        dir,
        &Golden {
            pixels,
            pixel_shape: shape,
            features: Vec::new(),
            feature_shape: Vec::new(),
        },
    )
}

/// Runs the graph on `g.pixels` as they are (shape `g.pixel_shape`).
fn run_batch(dir: &Path, g: &Golden) -> (Vec<i64>, Vec<f32>) {
    let mut session = session(&dir.join(siglip::GRAPH));
    let (shape, pixels) = (g.pixel_shape.clone(), g.pixels.clone());
    let out = session
        .run(vec![(
            siglip::PIXEL_VALUES.to_string(),
            Tensor::from_array((shape, pixels)).unwrap().into_dyn(),
        )])
        .expect("run vision.onnx");
    let (s, f) = out[siglip::IMAGE_FEATURES]
        .try_extract_tensor::<f32>()
        .unwrap();
    (s.to_vec(), f.to_vec())
}

#[test]
fn vision_features_match_transformers_fp32() {
    let g = golden();
    let (tmp, built) = build(Dtype::Fp32, Scheme::None);
    assert_eq!(built.config.mm_tokens_per_image, 4);
    assert_eq!(built.config.text_hidden_size, 64);
    assert!(built.reports.is_empty());
    let (shape, f) = run(tmp.path(), &g, 1);
    assert_eq!(shape, g.feature_shape);
    let d = max_abs_diff(&f, &g.features);
    let scale = g.features.iter().fold(0f32, |m, v| m.max(v.abs()));
    eprintln!("fp32: max abs diff {d:e} (features up to {scale})");
    assert!(d <= 1e-4, "fp32 image features: max abs diff {d} > 1e-4");
}

/// `pattern_u8(size)` of weights/reference/gemma3_golden.py, normalised as the processor does:
/// (u8 · (1/255) in f64, rounded to f32, − 0.5) / 0.5 in f32.
fn pattern_pixels(size: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(3 * size * size);
    for c in 0..3 {
        for y in 0..size {
            for x in 0..size {
                let u = match c {
                    0 => (x * 4 + y) % 256,
                    1 => (y * 5 + 3 * x) % 256,
                    _ => ((x * y) / 3 + 40) % 256,
                };
                let r = (u as f64 * (1.0 / 255.0)) as f32;
                out.push((r - 0.5) / 0.5);
            }
        }
    }
    out
}

/// The real model's image geometry (896 px, a 64×64 patch grid, 4×4 pooling to 256 tokens) at toy
/// widths: features within 1e-4 of transformers.
#[test]
fn vision_features_at_real_geometry_fp32() {
    let v: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixture("gemma3_vision_896").join("golden.json")).unwrap(),
    )
    .unwrap();
    let want: Vec<f32> = v["image_features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    let (tmp, built) = build_from("gemma3_vision_896", Dtype::Fp32, Scheme::None);
    assert_eq!(
        (built.config.image_size, built.config.mm_tokens_per_image),
        (896, 256)
    );
    let g = Golden {
        pixels: pattern_pixels(896),
        pixel_shape: vec![1, 3, 896, 896],
        features: want,
        feature_shape: vec![1, 256, 24],
    };
    let (shape, f) = run(tmp.path(), &g, 1);
    assert_eq!(shape, g.feature_shape);
    let d = max_abs_diff(&f, &g.features);
    eprintln!("896 px: max abs diff {d:e}");
    assert!(d <= 1e-4, "896 px image features: max abs diff {d} > 1e-4");
}

/// Two different images in one batch (the batch dimension is symbolic all the way through, and
/// no op mixes images): the golden image's row matches transformers, the other row matches the
/// same graph run on that image alone.
#[test]
fn vision_batch_of_two() {
    let g = golden();
    let (tmp, _) = build(Dtype::Fp32, Scheme::None);
    // The second image: the golden one mirrored (pixel order reversed).
    let other = Golden {
        pixels: g.pixels.iter().rev().copied().collect(),
        pixel_shape: g.pixel_shape.clone(),
        features: Vec::new(),
        feature_shape: g.feature_shape.clone(),
    };
    let (_, alone) = run(tmp.path(), &other, 1);
    let both = Golden {
        pixels: g.pixels.iter().chain(&other.pixels).copied().collect(),
        pixel_shape: vec![2, 3, g.pixel_shape[2], g.pixel_shape[3]],
        features: Vec::new(),
        feature_shape: Vec::new(),
    };
    let (shape, f) = run_batch(tmp.path(), &both);
    assert_eq!(shape[0], 2);
    let n = g.features.len();
    let d0 = max_abs_diff(&f[..n], &g.features);
    assert!(d0 <= 1e-4, "image 0 of the batch: max abs diff {d0}");
    let d1 = max_abs_diff(&f[n..], &alone);
    assert!(
        d1 <= 1e-5,
        "image 1 of the batch vs alone: max abs diff {d1}"
    );
    assert!(
        max_abs_diff(&alone, &g.features) > 0.1,
        "the two images should differ"
    );
}

/// int8 weight-only on the tower's q/k/v, out_proj, fc1 and fc2: symmetric RTN (MatMulNBits,
/// block 32) and HQQ (group 64, float zero points: MatMulNBits plus the zero-point correction; fc2's
/// K = 48 is padded to a whole group). Bound: 2% of the largest feature magnitude. The weights carry
/// about 0.4% rms error per tensor (127 levels per block); through two layers, LayerNorms and the
/// projector that stays well under 1%, while dropping a bias or mixing heads moves features by tens
/// of percent.
#[test]
fn vision_features_int8_within_bound() {
    let g = golden();
    let scale = g.features.iter().fold(0f32, |m, v| m.max(v.abs()));
    for scheme in [
        Scheme::Rtn { bits: 8, block: 32 },
        Scheme::Hqq { bits: 8, group: 64 },
    ] {
        let (tmp, built) = build(Dtype::Fp32, scheme);
        // 2 layers × (qkv, out_proj, fc1, fc2).
        assert_eq!(built.reports.len(), 8);
        let (_, f) = run(tmp.path(), &g, 1);
        let d = max_abs_diff(&f, &g.features);
        eprintln!(
            "{}: max abs diff {d:e}, {:.3}% of max |feature| {scale}",
            scheme.label(),
            100.0 * d / scale
        );
        assert!(
            d <= 0.02 * scale,
            "{} image features: max abs diff {d} > 2% of {scale}",
            scheme.label()
        );
    }
}

/// google/gemma-3-4b-it's config.json (vision fields as released: most SigLIP fields omitted, so
/// transformers' defaults apply).
#[test]
fn real_gemma3_4b_vision_config() {
    let json = r#"{
        "architectures": ["Gemma3ForConditionalGeneration"],
        "boi_token_index": 255999, "eoi_token_index": 256000, "eos_token_id": [1, 106],
        "image_token_index": 262144, "initializer_range": 0.02, "mm_tokens_per_image": 256,
        "model_type": "gemma3",
        "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
            "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
            "sliding_window": 1024},
        "torch_dtype": "bfloat16", "transformers_version": "4.50.0.dev0",
        "vision_config": {"hidden_size": 1152, "image_size": 896, "intermediate_size": 4304,
            "model_type": "siglip_vision_model", "num_attention_heads": 16,
            "num_hidden_layers": 27, "patch_size": 14, "vision_use_head": false}
    }"#;
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("config.json");
    std::fs::write(&p, json).unwrap();
    let spec = Gemma3Config::load(&p).unwrap().vision_spec(&p).unwrap();
    assert_eq!(
        (spec.hidden, spec.intermediate, spec.layers, spec.heads),
        (1152, 4304, 27, 16)
    );
    assert_eq!(
        (spec.image_size, spec.patch_size, spec.channels),
        (896, 14, 3)
    );
    assert_eq!(
        (spec.patches_per_side(), spec.tokens_per_side(), spec.pool()),
        (64, 16, 4)
    );
    assert_eq!(
        (spec.mm_tokens, spec.text_hidden, spec.eps),
        (256, 2560, 1e-6)
    );
    assert_eq!(
        (spec.image_token_id, spec.boi_token_id, spec.eoi_token_id),
        (262144, 255999, 256000)
    );
}

/// A projector whose token grid does not divide the patch grid is refused, naming the field.
#[test]
fn bad_mm_tokens_is_a_config_error() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("config.json");
    std::fs::write(
        &p,
        r#"{"mm_tokens_per_image": 9, "text_config": {"hidden_size": 64},
            "vision_config": {"image_size": 56, "patch_size": 14}}"#,
    )
    .unwrap();
    let e = Gemma3Config::load(&p)
        .unwrap()
        .vision_spec(&p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("mm_tokens_per_image 9"), "{e}");
}

/// fp16 graph on ONNX Runtime CPU (pixels still float32 in; features float16 out). Bound: 0.5% of
/// the largest feature, for fp16's 11-bit mantissa through the tower (activations and weights
/// rounded at every op; measured 0.07%).
#[test]
fn vision_features_fp16_within_bound() {
    let g = golden();
    let (tmp, built) = build(Dtype::Fp16, Scheme::None);
    assert_eq!(built.config.dtype, "float16");
    let mut session = session(&tmp.path().join(siglip::GRAPH));
    let out = session
        .run(vec![(
            siglip::PIXEL_VALUES.to_string(),
            Tensor::from_array((g.pixel_shape.clone(), g.pixels.clone()))
                .unwrap()
                .into_dyn(),
        )])
        .expect("run fp16 vision.onnx");
    let (_, f) = out[siglip::IMAGE_FEATURES]
        .try_extract_tensor::<half::f16>()
        .unwrap();
    let f: Vec<f32> = f.iter().map(|v| v.to_f32()).collect();
    let d = max_abs_diff(&f, &g.features);
    let scale = g.features.iter().fold(0f32, |m, v| m.max(v.abs()));
    eprintln!(
        "fp16: max abs diff {d:e}, {:.3}% of max |feature| {scale}",
        100.0 * d / scale
    );
    assert!(d <= 0.005 * scale, "fp16 image features: max abs diff {d}");
}

/// bf16 builds (ONNX Runtime's CPU provider has no bf16 MatMul, so it is not run here): weights are
/// stored at half the fp32 size, the output is declared bfloat16.
#[test]
fn vision_bf16_builds() {
    let (_t32, fp32) = build(Dtype::Fp32, Scheme::None);
    let (_t16, bf16) = build(Dtype::Bf16, Scheme::None);
    assert_eq!(bf16.config.dtype, "bfloat16");
    assert!(bf16.data.size < fp32.data.size * 6 / 10);
}

/// The merge the engine does between vision.onnx and the text decoder, checked against the
/// `inputs_embeds` transformers' language model received: text rows are the embedding row scaled
/// by √hidden (8 here), image-token rows are our image features unscaled, in order.
#[test]
fn merged_embeddings_match_transformers() {
    use cog_weights::checkpoint::TensorSource;
    let p = fixture("gemma3").join("golden.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    let ids: Vec<usize> = v["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    let want: Vec<f32> = v["inputs_embeds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    let image = v["image_token_id"].as_u64().unwrap() as usize;
    let g = golden();
    let (tmp, built) = build(Dtype::Fp32, Scheme::None);
    let h = built.config.text_hidden_size;
    let (_, feats) = run(tmp.path(), &g, 1);
    let src = SafetensorsSource::open_dir(&fixture("gemma3")).unwrap();
    let embed = src.get("language_model.model.embed_tokens.weight").unwrap();
    let scale = (h as f32).sqrt();
    let mut merged = Vec::new();
    let mut next_feature = 0;
    for &id in &ids {
        if id == image {
            merged.extend_from_slice(&feats[next_feature * h..(next_feature + 1) * h]);
            next_feature += 1;
        } else {
            merged.extend(embed.data[id * h..(id + 1) * h].iter().map(|x| x * scale));
        }
    }
    assert_eq!(next_feature, built.config.mm_tokens_per_image);
    let d = max_abs_diff(&merged, &want);
    assert!(d <= 1e-4, "merged inputs_embeds: max abs diff {d}");
}
