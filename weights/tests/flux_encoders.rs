//! The FLUX pipeline's encoder graphs (CLIP pooled output, T5 encoder, VAE decoder and encoder)
//! in ONNX Runtime against transformers / diffusers on the tiny random components of
//! weights/fixtures/flux_encoders (made by weights/reference/flux_encoders_golden.py).

mod common;

use cog_weights::arch::{clip, nn, t5, vae, Dtype};
use cog_weights::checkpoint::safetensors::SafetensorsSource;
use cog_weights::checkpoint::TensorSource;
use cog_weights::quant::{self, Scheme};
use common::*;
use ort::value::Tensor;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// fp32 graphs against the fp32 references: max abs difference.
const TOL: f32 = 1e-4;

fn dir(component: &str) -> PathBuf {
    fixture("flux_encoders").join(component)
}

fn golden() -> Value {
    let p = fixture("flux_encoders").join("golden.json");
    serde_json::from_slice(&std::fs::read(&p).expect("golden.json")).expect("json")
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn ids(v: &Value) -> (Vec<i64>, Vec<i64>) {
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
    let shape = vec![rows.len() as i64, rows[0].len() as i64];
    (shape, rows.concat())
}

/// A binary golden (`{"file", "shape"}`): little-endian f32.
fn binary(v: &Value) -> (Vec<i64>, Vec<f32>) {
    let p = fixture("flux_encoders").join(v["file"].as_str().unwrap());
    let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let data: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let shape: Vec<i64> = v["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect();
    assert_eq!(shape.iter().product::<i64>() as usize, data.len());
    (shape, data)
}

/// Runs `graph` on one input; returns each named output (shape, data).
fn run(
    graph: &Path,
    input: &str,
    value: ort::value::DynValue,
    outputs: &[&str],
) -> Vec<(Vec<i64>, Vec<f32>)> {
    let mut s = session(graph);
    let out = s.run(vec![(input.to_string(), value)]).expect("run");
    outputs
        .iter()
        .map(|n| {
            let (shape, data) = out[*n].try_extract_tensor::<f32>().unwrap();
            (shape.to_vec(), data.to_vec())
        })
        .collect()
}

/// Tensors need the runtime loaded first.
fn int_input((shape, data): (Vec<i64>, Vec<i64>)) -> ort::value::DynValue {
    ort_env();
    Tensor::from_array((shape, data)).unwrap().into_dyn()
}

fn float_input((shape, data): (Vec<i64>, Vec<f32>)) -> ort::value::DynValue {
    ort_env();
    Tensor::from_array((shape, data)).unwrap().into_dyn()
}

fn check(what: &str, got: &[f32], want: &[f32], tol: f32) -> f32 {
    let d = max_abs_diff(got, want);
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    eprintln!("{what}: max abs diff {d:e} (max |golden| {scale})");
    assert!(d <= tol, "{what}: max abs diff {d} > {tol}");
    d
}

#[test]
fn clip_pooled_output_matches_transformers() {
    let g = golden();
    let tmp = tempfile::tempdir().unwrap();
    let built = clip::build_dir(&dir("text_encoder"), tmp.path(), Dtype::Fp32).unwrap();
    let (shape, data) = ids(&g["clip"]["input_ids"]);
    let b = shape[0];
    let out = run(
        &tmp.path().join(&built.graph),
        clip::INPUT_IDS,
        int_input((shape, data)),
        &[clip::POOLED_OUTPUT],
    );
    let h = g["clip"]["hidden"].as_i64().unwrap();
    assert_eq!(out[0].0, vec![b, h]);
    check(
        "clip pooled (eos_token_id 2)",
        &out[0].1,
        &floats(&g["clip"]["pooled_output"]),
        TOL,
    );
}

/// With a real `eos_token_id` (not the legacy 2) the pool is at the first EOS, not at the
/// largest id: the golden's ids put larger ids before the EOS, so the two rules differ.
#[test]
fn clip_pools_at_first_eos_for_new_configs() {
    let g = golden();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("text_encoder");
    std::fs::create_dir(&src).unwrap();
    std::fs::copy(
        dir("text_encoder").join("model.safetensors"),
        src.join("model.safetensors"),
    )
    .unwrap();
    let mut cfg: Value =
        serde_json::from_slice(&std::fs::read(dir("text_encoder").join("config.json")).unwrap())
            .unwrap();
    cfg["eos_token_id"] = 500.into();
    std::fs::write(src.join("config.json"), cfg.to_string()).unwrap();
    let out_dir = tmp.path().join("out");
    let built = clip::build_dir(&src, &out_dir, Dtype::Fp32).unwrap();
    let out = run(
        &out_dir.join(&built.graph),
        clip::INPUT_IDS,
        int_input(ids(&g["clip"]["eos500_input_ids"])),
        &[clip::POOLED_OUTPUT],
    );
    check(
        "clip pooled (eos_token_id 500)",
        &out[0].1,
        &floats(&g["clip"]["eos500_pooled_output"]),
        TOL,
    );
}

/// The fixture's CLIP as checkpoints saved by transformers 4 (FLUX.1-dev's) name it: every
/// tensor under `text_model.`.
struct TextModelPrefixed(SafetensorsSource);

impl TensorSource for TextModelPrefixed {
    fn get(&self, name: &str) -> Result<cog_weights::checkpoint::Tensor, cog_weights::Error> {
        match name.strip_prefix("text_model.") {
            Some(inner) => self.0.get(inner),
            None => Err(cog_weights::Error::MissingTensor {
                file: PathBuf::from("prefixed"),
                tensor: name.to_string(),
            }),
        }
    }
    fn contains(&self, name: &str) -> bool {
        name.strip_prefix("text_model.")
            .is_some_and(|n| self.0.contains(n))
    }
    fn file_of(&self, name: &str) -> PathBuf {
        self.0.file_of(name)
    }
}

#[test]
fn clip_reads_text_model_prefixed_checkpoints() {
    let g = golden();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = clip::ClipTextConfig::load(&dir("text_encoder")).unwrap();
    let src = TextModelPrefixed(SafetensorsSource::open_component(&dir("text_encoder")).unwrap());
    let built = nn::write_graph(tmp.path(), clip::GRAPH, Dtype::Fp32, |net| {
        clip::build(&cfg, &src, net)
    })
    .unwrap();
    let out = run(
        &tmp.path().join(&built.graph),
        clip::INPUT_IDS,
        int_input(ids(&g["clip"]["input_ids"])),
        &[clip::POOLED_OUTPUT],
    );
    check(
        "clip pooled (text_model. names)",
        &out[0].1,
        &floats(&g["clip"]["pooled_output"]),
        TOL,
    );
}

fn t5_graph(out: &Path, scheme: Scheme) -> PathBuf {
    let built = t5::build_dir(&dir("text_encoder_2"), out, Dtype::Fp32, scheme).unwrap();
    for r in &built.reports {
        eprintln!("  {} {}: rel rmse {:.4}", r.tensor, r.scheme, r.rel_rmse);
    }
    eprintln!(
        "t5 {}: {} bytes of weights",
        scheme.label(),
        built.data_entry.size
    );
    out.join(&built.graph)
}

/// Two prompts padded to 512 as FluxPipeline pads them (relative positions up to ±511, so
/// every bucket, the clamped ones included, is used).
#[test]
fn t5_matches_transformers_at_512_tokens() {
    let g = golden();
    let tmp = tempfile::tempdir().unwrap();
    let graph = t5_graph(tmp.path(), Scheme::None);
    let (shape, want) = binary(&g["t5"]["last_hidden_state"]);
    let out = run(
        &graph,
        t5::INPUT_IDS,
        int_input(ids(&g["t5"]["input_ids"])),
        &[t5::LAST_HIDDEN_STATE],
    );
    assert_eq!(out[0].0, shape);
    check("t5 fp32 [2, 512]", &out[0].1, &want, TOL);

    // The sequence length is not baked in: a 20-token sequence with no padding.
    let out = run(
        &graph,
        t5::INPUT_IDS,
        int_input(ids(&g["t5"]["short_input_ids"])),
        &[t5::LAST_HIDDEN_STATE],
    );
    check(
        "t5 fp32 [1, 20]",
        &out[0].1,
        &floats(&g["t5"]["short_last_hidden_state"]),
        TOL,
    );
}

/// The checkpoint with every T5 linear weight replaced by its quantised-then-dequantised value.
/// RTN quantises each (row, block) on its own, so dequantising q, k, v one by one equals
/// dequantising the fused matrix the graph holds.
struct Dequantized {
    inner: SafetensorsSource,
    scheme: Scheme,
}

impl TensorSource for Dequantized {
    fn get(&self, name: &str) -> Result<cog_weights::checkpoint::Tensor, cog_weights::Error> {
        let t = self.inner.get(name)?;
        let linear = [".q.", ".k.", ".v.", ".o.", ".wi_0.", ".wi_1.", ".wo."]
            .iter()
            .any(|p| name.contains(p));
        if !linear {
            return Ok(t);
        }
        Ok(quant::quantize(&t, self.scheme).map_or(t, |q| q.dequantize()))
    }
    fn contains(&self, name: &str) -> bool {
        self.inner.contains(name)
    }
    fn file_of(&self, name: &str) -> PathBuf {
        self.inner.file_of(name)
    }
}

/// Weight-only quantised T5 (MatMulNBits). Two checks per scheme:
/// - exactness of the graph: RTN int8 / int4 against an fp32 graph of the dequantised weights,
///   max abs ≤ 1e-4 (this is where a wrong layout or fusion would show);
/// - closeness to transformers' fp32 output, as relative rms error ||y − y_ref|| / ||y_ref||:
///   8-bit ≤ 0.03 (measured 0.013 RTN, 0.010 HQQ), 4-bit ≤ 0.35 (measured 0.18 RTN, 0.15 HQQ).
///   This tiny random T5 (std-0.15 weights, unscaled attention) amplifies the ~0.5 % (8-bit) /
///   ~8 % (4-bit) relative weight error about 2×; the bounds say the graphs are sound, not what
///   4-bit costs T5-XXL's real weights.
#[test]
fn t5_weight_only_quantised() {
    let g = golden();
    let (_, want) = binary(&g["t5"]["last_hidden_state"]);
    let input = || int_input(ids(&g["t5"]["input_ids"]));
    for (scheme, rel_tol) in [
        (Scheme::Rtn { bits: 8, block: 32 }, 0.03),
        (Scheme::Hqq { bits: 8, group: 32 }, 0.03),
        (Scheme::Rtn { bits: 4, block: 32 }, 0.35),
        (Scheme::Hqq { bits: 4, group: 32 }, 0.35),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let graph = t5_graph(tmp.path(), scheme);
        let out = run(&graph, t5::INPUT_IDS, input(), &[t5::LAST_HIDDEN_STATE]);
        let rel = rel_rms(&out[0].1, &want);
        eprintln!(
            "t5 {}: relative rms error vs transformers {rel:e}",
            scheme.label()
        );
        assert!(
            rel <= rel_tol,
            "t5 {}: relative rms error {rel} > {rel_tol}",
            scheme.label()
        );

        if let Scheme::Rtn { .. } = scheme {
            let src = Dequantized {
                inner: SafetensorsSource::open_component(&dir("text_encoder_2")).unwrap(),
                scheme,
            };
            let cfg = t5::T5Config::load(&dir("text_encoder_2")).unwrap();
            let ref_dir = tmp.path().join("dequantized");
            let built = nn::write_graph(&ref_dir, t5::GRAPH, Dtype::Fp32, |net| {
                t5::build(&cfg, &src, net, Scheme::None)
            })
            .unwrap();
            let reference = run(
                &ref_dir.join(&built.graph),
                t5::INPUT_IDS,
                input(),
                &[t5::LAST_HIDDEN_STATE],
            );
            check(
                &format!("t5 {} vs its dequantised weights in fp32", scheme.label()),
                &out[0].1,
                &reference[0].1,
                TOL,
            );
        }
    }
}

/// ||a − b|| / ||b||.
fn rel_rms(a: &[f32], b: &[f32]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        num += ((x - y) as f64).powi(2);
        den += (*y as f64).powi(2);
    }
    (num / den).sqrt()
}

#[test]
fn vae_decoder_matches_diffusers() {
    let g = golden();
    let tmp = tempfile::tempdir().unwrap();
    let built = vae::build_decoder_dir(&dir("vae"), tmp.path(), Dtype::Fp32).unwrap();
    let (shape, want) = binary(&g["vae"]["decoded"]);
    let out = run(
        &tmp.path().join(&built.graph),
        vae::LATENT,
        float_input(binary(&g["vae"]["latent"])),
        &[vae::IMAGE],
    );
    assert_eq!(out[0].0, shape);
    check("vae decoder", &out[0].1, &want, TOL);
}

#[test]
fn vae_encoder_matches_diffusers() {
    let g = golden();
    let tmp = tempfile::tempdir().unwrap();
    let built = vae::build_encoder_dir(&dir("vae"), tmp.path(), Dtype::Fp32).unwrap();
    let out = run(
        &tmp.path().join(&built.graph),
        vae::IMAGE,
        float_input(binary(&g["vae"]["image"])),
        &[vae::LATENT_MEAN, vae::LATENT_LOGVAR],
    );
    for (got, key) in out.iter().zip(["latent_mean", "latent_logvar"]) {
        let (shape, want) = binary(&g["vae"][key]);
        assert_eq!(got.0, shape, "{key} shape");
        check(&format!("vae encoder {key}"), &got.1, &want, TOL);
    }
}

/// Runs `graph` on one input; returns each named f16 output widened to f32.
fn run_f16(
    graph: &Path,
    input: &str,
    value: ort::value::DynValue,
    outputs: &[&str],
) -> Vec<Vec<f32>> {
    let mut s = session(graph);
    let out = s.run(vec![(input.to_string(), value)]).expect("run");
    outputs
        .iter()
        .map(|n| {
            let (_, data) = out[*n].try_extract_tensor::<half::f16>().unwrap();
            data.iter().map(|v| v.to_f32()).collect()
        })
        .collect()
}

fn f16_input((shape, data): (Vec<i64>, Vec<f32>)) -> ort::value::DynValue {
    ort_env();
    let h: Vec<half::f16> = data.iter().map(|&v| half::f16::from_f32(v)).collect();
    Tensor::from_array((shape, h)).unwrap().into_dyn()
}

/// The half-precision plumbing (constants, masks, casts around the fp32 group-norm statistics)
/// in fp16 graphs, which ONNX Runtime's CPU runs (casting to fp32 where it lacks fp16 kernels).
/// bf16 graphs share the plumbing but have no CPU kernels; they are not run here. Bound: relative
/// rms error ≤ 1e-2 (fp16 weights and activations carry ~5e-4 relative rounding per op).
#[test]
fn fp16_graphs_stay_close() {
    let g = golden();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path();
    let tol = 1e-2;
    let rel = |what: &str, got: &[f32], want: &[f32]| {
        let r = rel_rms(got, want);
        eprintln!("{what} fp16: relative rms error {r:e}");
        assert!(r <= tol, "{what} fp16: relative rms error {r} > {tol}");
    };

    let c = clip::build_dir(&dir("text_encoder"), out, Dtype::Fp16).unwrap();
    let got = run_f16(
        &out.join(&c.graph),
        clip::INPUT_IDS,
        int_input(ids(&g["clip"]["input_ids"])),
        &[clip::POOLED_OUTPUT],
    );
    rel("clip", &got[0], &floats(&g["clip"]["pooled_output"]));

    let t = t5::build_dir(&dir("text_encoder_2"), out, Dtype::Fp16, Scheme::None).unwrap();
    let got = run_f16(
        &out.join(&t.graph),
        t5::INPUT_IDS,
        int_input(ids(&g["t5"]["input_ids"])),
        &[t5::LAST_HIDDEN_STATE],
    );
    rel("t5", &got[0], &binary(&g["t5"]["last_hidden_state"]).1);

    let d = vae::build_decoder_dir(&dir("vae"), out, Dtype::Fp16).unwrap();
    let got = run_f16(
        &out.join(&d.graph),
        vae::LATENT,
        f16_input(binary(&g["vae"]["latent"])),
        &[vae::IMAGE],
    );
    rel("vae decoder", &got[0], &binary(&g["vae"]["decoded"]).1);

    let e = vae::build_encoder_dir(&dir("vae"), out, Dtype::Fp16).unwrap();
    let got = run_f16(
        &out.join(&e.graph),
        vae::IMAGE,
        f16_input(binary(&g["vae"]["image"])),
        &[vae::LATENT_MEAN, vae::LATENT_LOGVAR],
    );
    rel(
        "vae latent_mean",
        &got[0],
        &binary(&g["vae"]["latent_mean"]).1,
    );
    rel(
        "vae latent_logvar",
        &got[1],
        &binary(&g["vae"]["latent_logvar"]).1,
    );
}

/// bf16 graphs cannot run on ONNX Runtime's CPU provider (no bf16 kernels for Add, Conv,
/// MatMulNBits), but loading one runs ONNX type inference over every node, which rejects a
/// type the op does not accept (as opset 21's Conv rejected bf16). So: each bf16 graph loads,
/// and the only complaint is a missing CPU kernel. (On CUDA every op used has a bf16 kernel or,
/// for the int32 ArgMax, a CPU fallback; that run is the device's.)
#[test]
fn bf16_graphs_pass_type_inference() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path();
    let graphs = [
        clip::build_dir(&dir("text_encoder"), out, Dtype::Bf16).unwrap(),
        t5::build_dir(&dir("text_encoder_2"), out, Dtype::Bf16, Scheme::None).unwrap(),
        vae::build_decoder_dir(&dir("vae"), out, Dtype::Bf16).unwrap(),
        vae::build_encoder_dir(&dir("vae"), out, Dtype::Bf16).unwrap(),
    ];
    for built in graphs {
        let r = ort::session::Session::builder(ort_env())
            .unwrap()
            .commit_from_file(out.join(&built.graph));
        match r {
            Ok(_) => eprintln!("{}: bf16 loads and runs on CPU", built.graph),
            Err(e) => {
                let e = e.to_string();
                eprintln!("{}: {e}", built.graph);
                assert!(
                    e.contains("Could not find an implementation"),
                    "{}: bf16 graph rejected: {e}",
                    built.graph
                );
            }
        }
    }
}

/// The pipeline-level builder writes the four graph pairs, and the manifest entries it returns
/// are the data files' real sizes and digests.
#[test]
fn pipeline_builder_writes_all_graphs() {
    use cog_weights::arch::flux_encoders::{self, EncoderOptions};
    let tmp = tempfile::tempdir().unwrap();
    let opts = EncoderOptions {
        t5_linear: Scheme::Rtn { bits: 8, block: 32 },
        ..EncoderOptions::default()
    };
    let graphs = flux_encoders::build(&fixture("flux_encoders"), tmp.path(), &opts).unwrap();
    let names: Vec<&str> = graphs.all().iter().map(|g| g.graph.as_str()).collect();
    assert_eq!(
        names,
        [
            "clip.onnx",
            "t5.onnx",
            "vae_decoder.onnx",
            "vae_encoder.onnx"
        ]
    );
    assert!(!graphs.t5.reports.is_empty(), "T5 linears were quantised");
    for g in graphs.all() {
        assert_eq!(g.dtype, Dtype::Bf16);
        assert!(tmp.path().join(&g.graph).is_file());
        let entry = cog_weights::build::hash_file(&tmp.path().join(&g.data)).unwrap();
        assert_eq!(entry, g.data_entry, "{}", g.data);
    }
}

/// FLUX.1-dev's own component configs parse, and read as the graphs need them.
#[test]
fn flux_dev_configs_parse() {
    let tmp = tempfile::tempdir().unwrap();
    let write = |name: &str, json: &str| {
        let d = tmp.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("config.json"), json).unwrap();
        d
    };
    let c = clip::ClipTextConfig::load(&write(
        "text_encoder",
        r#"{"_name_or_path": "openai/clip-vit-large-patch14", "architectures": ["CLIPTextModel"],
        "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0, "eos_token_id": 2,
        "hidden_act": "quick_gelu", "hidden_size": 768, "initializer_factor": 1.0,
        "initializer_range": 0.02, "intermediate_size": 3072, "layer_norm_eps": 1e-05,
        "max_position_embeddings": 77, "model_type": "clip_text_model", "num_attention_heads": 12,
        "num_hidden_layers": 12, "pad_token_id": 1, "projection_dim": 768,
        "torch_dtype": "bfloat16", "transformers_version": "4.43.3", "vocab_size": 49408}"#,
    ))
    .unwrap();
    assert_eq!(
        (c.hidden_size, c.num_hidden_layers, c.eos_token_id),
        (768, 12, 2)
    );
    let t = t5::T5Config::load(&write(
        "text_encoder_2",
        r#"{"_name_or_path": "google/t5-v1_1-xxl", "architectures": ["T5EncoderModel"],
        "classifier_dropout": 0.0, "d_ff": 10240, "d_kv": 64, "d_model": 4096,
        "decoder_start_token_id": 0, "dense_act_fn": "gelu_new", "dropout_rate": 0.1,
        "eos_token_id": 1, "feed_forward_proj": "gated-gelu", "initializer_factor": 1.0,
        "is_encoder_decoder": true, "is_gated_act": true, "layer_norm_epsilon": 1e-06,
        "model_type": "t5", "num_decoder_layers": 24, "num_heads": 64, "num_layers": 24,
        "output_past": true, "pad_token_id": 0, "relative_attention_max_distance": 128,
        "relative_attention_num_buckets": 32, "tie_word_embeddings": false,
        "torch_dtype": "bfloat16", "transformers_version": "4.43.3", "use_cache": true,
        "vocab_size": 32128}"#,
    ))
    .unwrap();
    assert!(t.gated());
    assert_eq!(t.act(), "gelu_new");
    assert_eq!(
        (t.d_model, t.num_heads * t.d_kv, t.num_layers),
        (4096, 4096, 24)
    );
    let v = vae::VaeConfig::load(&write(
        "vae",
        r#"{"_class_name": "AutoencoderKL", "_diffusers_version": "0.30.0.dev0", "act_fn": "silu",
        "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D",
                             "DownEncoderBlock2D"],
        "force_upcast": true, "in_channels": 3, "latent_channels": 16, "latents_mean": null,
        "latents_std": null, "layers_per_block": 2, "mid_block_add_attention": true,
        "norm_num_groups": 32, "out_channels": 3, "sample_size": 1024, "scaling_factor": 0.3611,
        "shift_factor": 0.1159,
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D",
                           "UpDecoderBlock2D"],
        "use_post_quant_conv": false, "use_quant_conv": false}"#,
    ))
    .unwrap();
    assert_eq!((v.latent_channels, v.scale_factor()), (16, 8));
    assert!(!v.use_quant_conv && !v.use_post_quant_conv);
    assert_eq!((v.scaling_factor, v.shift_factor), (0.3611, Some(0.1159)));
}
