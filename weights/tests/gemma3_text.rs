//! Gemma 3 text decoder (embed.onnx + decoder.onnx) against transformers on the tiny random
//! Gemma3ForCausalLM in fixtures/gemma3_text (weights/reference/gemma3_text_golden.py): fp32
//! logits within 1e-4 and identical greedy tokens through the KV cache, for token prompts and for
//! image-feature rows merged at image-token positions (causal, and bidirectional within each image
//! as Gemma3ForConditionalGeneration runs it); the int8 build against transformers with the same
//! int8 weights; the multimodal checkpoint layout; the bf16 default.

mod common;

use cog_weights::arch::Dtype;
use cog_weights::build::{build, BuildRequest};
use cog_weights::checkpoint::safetensors::SafetensorsSource;
use cog_weights::checkpoint::TensorSource;
use cog_weights::format::{DecoderConfig, Manifest};
use cog_weights::prune::source::PruneRequest;
use cog_weights::quant::QuantArg;
use common::*;
use serde_json::Value;
use std::path::Path;

const TOL: f32 = 1e-4;
/// The same merged prompt with `token_type_ids` marking the image tokens, as
/// Gemma3ForConditionalGeneration runs it: each image's tokens attend to each other in both
/// directions (two images here, of 3 and 2 tokens, with a sliding window of 4),
/// everything else causal; then greedy decoding of text tokens through the cache.
#[test]
fn image_tokens_attend_bidirectionally() {
    let v = json(&fixture(NAME).join("golden.json"));
    let e = &v["embeds"];
    let b = &v["embeds_bidirectional"];
    let ids = ints(&e["input_ids"]);
    let feats = floats(&e["image_features"]);
    let types = ints(&b["token_type_ids"]);
    let generated = ints(&b["generated"]);
    let vocab = ints(&b["logits_shape"])[1] as usize;
    let want: Vec<Vec<f32>> = floats(&b["logits"])
        .chunks(vocab)
        .map(<[f32]>::to_vec)
        .collect();
    let causal: Vec<f32> = floats(&e["logits"]);

    let (_tmp, dir) = compile(&fixture(NAME), Dtype::Fp32, QuantArg::None);
    let engine: DecoderConfig = serde_json::from_value(json(&dir.join("engine.json"))).unwrap();
    assert_eq!(engine.io.token_type_ids.as_deref(), Some("token_type_ids"));
    let mut emb = Embedder::open(&dir);
    let mut dec = Decoder::open(&dir);
    let x = emb.embed(&ids, &feats).unwrap();
    let rows = dec.step_embeds_typed(&x, &types);
    // The golden would not tell the two masks apart if they agreed: they differ by whole logits.
    let gap = max_abs_diff(&rows.concat(), &causal[..rows.len() * vocab]);
    assert!(
        gap > 1.0,
        "bidirectional and causal logits differ by only {gap}"
    );
    let worst = follow(&mut emb, &mut dec, rows, ids.len(), &generated, &want, TOL);
    eprintln!("gemma3_text bidirectional image attention: worst logit diff {worst:e} (causal differs by {gap})");
}

/// int8 weight-only logits against transformers' fp32 (see `int8_agrees_on_greedy`).
const INT8_TOL: f32 = 0.35;
const NAME: &str = "gemma3_text";

fn request(input: &Path, out: &Path, quant: QuantArg, prune: Option<PruneRequest>) -> BuildRequest {
    BuildRequest {
        input: input.to_path_buf(),
        output: out.to_path_buf(),
        dtype: Some(Dtype::Fp32),
        quant: Some(quant),
        force: false,
        prune,
        command: vec!["test".into()],
    }
}

/// Prefill `prompt` (through embed.onnx, no image rows), then decode greedily; checks every logits
/// row against `want` (rows over prompt + generated[..-1]) within `tol` and the greedy tokens.
/// Returns the largest difference seen.
fn run_tokens(dir: &Path, prompt: &[i64], generated: &[i64], want: &[Vec<f32>], tol: f32) -> f32 {
    let mut emb = Embedder::open(dir);
    let mut dec = Decoder::open(dir);
    let x = emb.embed(prompt, &[]).unwrap();
    let rows = dec.step_embeds(&x, prompt.len());
    follow(&mut emb, &mut dec, rows, prompt.len(), generated, want, tol)
}

/// Checks prefill rows then decodes `generated` token by token, comparing with `want`.
fn follow(
    emb: &mut Embedder,
    dec: &mut Decoder,
    prefill: Vec<Vec<f32>>,
    p: usize,
    generated: &[i64],
    want: &[Vec<f32>],
    tol: f32,
) -> f32 {
    let mut worst = 0f32;
    for (t, row) in prefill.iter().enumerate() {
        let d = max_abs_diff(row, &want[t]);
        worst = worst.max(d);
        assert!(
            d <= tol,
            "prefill position {t}: max abs logit diff {d} > {tol}"
        );
    }
    let mut next = argmax(&prefill[p - 1]) as i64;
    for (t, &tok) in generated.iter().enumerate() {
        assert_eq!(next, tok, "greedy token {t} differs from transformers");
        if t + 1 == generated.len() {
            break;
        }
        let x = emb.embed(&[next], &[]).unwrap();
        let row = dec.step_embeds(&x, 1).remove(0);
        let d = max_abs_diff(&row, &want[p + t]);
        worst = worst.max(d);
        assert!(d <= tol, "decode step {t}: max abs logit diff {d} > {tol}");
        next = argmax(&row) as i64;
    }
    worst
}

#[test]
fn fp32_matches_transformers() {
    let g = golden(NAME);
    let (_tmp, dir) = compile(&fixture(NAME), Dtype::Fp32, QuantArg::None);
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    // The embedding table is written once (decoder.onnx.data); embed.onnx points into it.
    assert_eq!(
        files,
        [
            "decoder.onnx",
            "decoder.onnx.data",
            "embed.onnx",
            "engine.json",
            "generation_config.json",
            "manifest.json"
        ]
    );
    cog_weights::verify::verify(&dir).unwrap();
    let engine: DecoderConfig = serde_json::from_value(json(&dir.join("engine.json"))).unwrap();
    assert_eq!(engine.graph, "decoder.onnx");
    assert_eq!(engine.io.input_ids, None);
    assert_eq!(engine.io.inputs_embeds.as_deref(), Some("inputs_embeds"));
    let embed = engine.embed.as_ref().unwrap();
    assert_eq!(
        (embed.graph.as_str(), embed.image_token_id),
        ("embed.onnx", Some(256))
    );
    assert_eq!(embed.embed_scale, (48f64).sqrt() as f32);
    assert_eq!(
        (engine.num_layers, engine.num_kv_heads, engine.head_dim),
        (6, 2, 16)
    );
    let m: Manifest = serde_json::from_value(json(&dir.join("manifest.json"))).unwrap();
    assert_eq!(
        (m.architecture.as_str(), m.dtype.as_str()),
        ("gemma3", "fp32")
    );
    assert!(m.pruning.is_none());

    let worst = run_tokens(&dir, &g.prompt, &g.generated, &g.logits, TOL);
    eprintln!("gemma3_text fp32: worst logit diff {worst:e}");
}

/// Image-feature rows merged at image-token positions (an out-of-vocabulary id, which transformers
/// zeroes before the lookup): the merged embeddings, then the logits and greedy tokens from them.
#[test]
fn image_rows_merge_like_transformers() {
    let v = json(&fixture(NAME).join("golden.json"));
    let e = &v["embeds"];
    let ids = ints(&e["input_ids"]);
    let feats = floats(&e["image_features"]);
    let want_embeds = floats(&e["inputs_embeds"]);
    let generated = ints(&e["generated"]);
    let vocab = ints(&e["logits_shape"])[1] as usize;
    let want: Vec<Vec<f32>> = floats(&e["logits"])
        .chunks(vocab)
        .map(<[f32]>::to_vec)
        .collect();

    let (_tmp, dir) = compile(&fixture(NAME), Dtype::Fp32, QuantArg::None);
    let mut emb = Embedder::open(&dir);
    let x = emb.embed(&ids, &feats).unwrap();
    let d = max_abs_diff(&x, &want_embeds);
    assert!(d <= 1e-5, "inputs_embeds differ by {d}");
    // One row short, or one too many: the run fails rather than misplacing rows.
    assert!(emb.embed(&ids, &feats[48..]).is_err());
    let mut more = feats.clone();
    more.extend_from_slice(&feats[..48]);
    assert!(emb.embed(&ids, &more).is_err());

    let mut dec = Decoder::open(&dir);
    let rows = dec.step_embeds(&x, ids.len());
    let worst = follow(&mut emb, &mut dec, rows, ids.len(), &generated, &want, TOL);
    eprintln!("gemma3_text merged embeds: embeds diff {d:e}, worst logit diff {worst:e}");
}

/// int8 weight-only (MatMulNBits, 8 bits, block 32) on every decoder linear; embeddings, lm_head
/// and norms stay fp32. The logits match transformers running the same dequantised weights
/// (golden `rtn8_logits`) within 1e-4, so the int8 path adds nothing beyond the quantisation
/// itself. Against the fp32 model they differ by what quantisation costs (0.30 here: ~0.4 %
/// relative error per weight compounding over 6 layers of deliberately large random weights),
/// bounded by 0.35, and the top-1 choice matches at every greedy step and at every prompt
/// position whose fp32 top-two margin exceeds twice that bound.
#[test]
fn int8_agrees_on_greedy() {
    let g = golden(NAME);
    let (_tmp, dir) = compile(&fixture(NAME), Dtype::Fp32, QuantArg::Rtn8);
    let m: Manifest = serde_json::from_value(json(&dir.join("manifest.json"))).unwrap();
    assert_eq!(m.quantization["linear"], "rtn8-b32");
    assert_eq!(m.quantization["lm_head"], "none");
    assert_eq!(m.quantization["embeddings"], "none");
    let report = json(&dir.join("quantization_report.json"));
    let mut names: Vec<String> = report
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["tensor"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    let mut want: Vec<String> = (0..6)
        .flat_map(|i| {
            [
                "mlp.down_proj",
                "mlp.gate_up_proj",
                "self_attn.o_proj",
                "self_attn.qkv_proj",
            ]
            .map(|t| format!("model.layers.{i}.{t}"))
        })
        .collect();
    want.sort();
    assert_eq!(names, want, "exactly the decoder linears are quantised");

    let p = g.prompt.len();
    let mut emb = Embedder::open(&dir);
    let mut dec = Decoder::open(&dir);
    let x = emb.embed(&g.prompt, &[]).unwrap();
    let mut rows = dec.step_embeds(&x, p);
    for &tok in &g.generated[..g.generated.len() - 1] {
        let x = emb.embed(&[tok], &[]).unwrap();
        rows.extend(dec.step_embeds(&x, 1));
    }
    let v = json(&fixture(NAME).join("golden.json"));
    let rtn8: Vec<Vec<f32>> = floats(&v["rtn8_logits"])
        .chunks(g.vocab)
        .map(<[f32]>::to_vec)
        .collect();
    let (mut worst, mut worst_q) = (0f32, 0f32);
    for (t, row) in rows.iter().enumerate() {
        let (want, want_q) = (&g.logits[t], &rtn8[t]);
        let dq = max_abs_diff(row, want_q);
        assert!(
            dq <= TOL,
            "position {t}: {dq} from transformers with the same int8 weights"
        );
        worst_q = worst_q.max(dq);
        worst = worst.max(max_abs_diff(row, want));
        // Where the fp32 top two are closer than twice the bound, either may win.
        let mut top = want.clone();
        top.sort_by(|a, b| b.total_cmp(a));
        if t + 1 >= p || top[0] - top[1] > 2.0 * INT8_TOL {
            assert_eq!(
                argmax(row),
                argmax(want),
                "int8 top-1 differs at position {t}"
            );
        }
    }
    eprintln!("gemma3_text int8: vs the same int8 weights in transformers {worst_q:e}");
    eprintln!("gemma3_text int8: worst logit diff {worst:e}");
    assert!(worst <= INT8_TOL, "int8 logits differ by {worst}");
}

/// The multimodal checkpoint layout: Gemma3ForConditionalGeneration's config (text model under
/// `text_config`, image token in the outer config) and `model.language_model.` tensor names.
#[test]
fn multimodal_layout_builds_the_same_model() {
    let g = golden(NAME);
    let tmp = tempfile::tempdir().unwrap();
    let ck = tmp.path().join("mm");
    std::fs::create_dir_all(&ck).unwrap();
    let mut text = json(&fixture(NAME).join("config.json"));
    text.as_object_mut().unwrap().remove("image_token_index");
    let cfg = serde_json::json!({
        "architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
        "image_token_index": 256, "text_config": text
    });
    std::fs::write(ck.join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    // Same tensor bytes, names prefixed: only the safetensors header changes.
    let raw = std::fs::read(fixture(NAME).join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(raw[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, Value> = serde_json::from_slice(&raw[8..8 + n]).unwrap();
    let renamed: serde_json::Map<String, Value> = header
        .into_iter()
        .map(|(k, v)| match k.strip_prefix("model.") {
            Some(rest) => (format!("model.language_model.{rest}"), v),
            None => (k, v),
        })
        .collect();
    let h = serde_json::to_vec(&renamed).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&raw[8 + n..]);
    std::fs::write(ck.join("model.safetensors"), out).unwrap();

    // (No `vision_config`: a checkpoint that has one gets its vision graph built too, and this
    // one has no tower; gemma3_vision_engine in cog-predictors covers the whole model.)
    let (_t, dir) = compile(&ck, Dtype::Fp32, QuantArg::None);
    let engine: DecoderConfig = serde_json::from_value(json(&dir.join("engine.json"))).unwrap();
    assert_eq!(engine.embed.unwrap().image_token_id, Some(256));
    assert!(engine.vision.is_none());
    run_tokens(&dir, &g.prompt, &g.generated, &g.logits, TOL);
}

/// bf16, the default compute dtype: the folder and engine.json say so, and the embedding graph
/// gives exactly bf16(row · bf16(√hidden)) at text positions (transformers' bf16 embedding: the
/// scale cast to the weight dtype, one rounding of the product) and the bf16 feature rows at image
/// positions. The bf16 decoder needs a CUDA device (ONNX Runtime's CPU EP has no bf16 MatMul or
/// GroupQueryAttention), so it is only built here.
#[test]
fn bf16_is_the_default() {
    use half::bf16;
    use ort::value::Tensor as OrtTensor;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let mut req = request(&fixture(NAME), &out, QuantArg::None, None);
    req.dtype = None;
    let summary = build(&req).unwrap();
    assert_eq!(summary.manifest.dtype, "bf16");
    assert_eq!(summary.manifest.quantization["linear"], "none");
    let engine: DecoderConfig = serde_json::from_value(json(&out.join("engine.json"))).unwrap();
    assert_eq!(engine.kv_dtype, "bfloat16");
    let scale = bf16::from_f32(48f32.sqrt()).to_f32();
    assert_eq!(engine.embed.unwrap().embed_scale, scale);

    let v = json(&fixture(NAME).join("golden.json"));
    let ids = ints(&v["embeds"]["input_ids"]);
    let feats: Vec<bf16> = floats(&v["embeds"]["image_features"])
        .into_iter()
        .map(bf16::from_f32)
        .collect();
    let mut s = session(&out.join("embed.onnx"));
    let res = s
        .run(ort::inputs![
            "input_ids" => OrtTensor::from_array((vec![1i64, ids.len() as i64], ids.clone())).unwrap(),
            "image_features" => OrtTensor::from_array((vec![feats.len() as i64 / 48, 48], feats.clone())).unwrap(),
        ])
        .unwrap();
    let (_, got) = res["inputs_embeds"].try_extract_tensor::<bf16>().unwrap();
    let table = SafetensorsSource::open_dir(&fixture(NAME))
        .unwrap()
        .get("model.embed_tokens.weight")
        .unwrap();
    let mut image_rows = feats.chunks(48);
    for (t, &id) in ids.iter().enumerate() {
        let want: Vec<bf16> = if id == 256 {
            image_rows.next().unwrap().to_vec()
        } else {
            let row = &table.data[id as usize * 48..(id as usize + 1) * 48];
            row.iter().map(|w| bf16::from_f32(w * scale)).collect()
        };
        assert_eq!(&got[t * 48..(t + 1) * 48], &want[..], "position {t}");
    }
}

/// A text-only checkpoint (no image token in its config, like Gemma-3-270M): the decoder has no
/// `token_type_ids` input, the embedding graph still declares `image_features` (one contract for
/// every Gemma 3 folder) and ignores it, and the logits are the same.
#[test]
fn text_only_checkpoint() {
    let g = golden(NAME);
    let tmp = tempfile::tempdir().unwrap();
    let ck = tmp.path().join("text");
    std::fs::create_dir_all(&ck).unwrap();
    for f in ["model.safetensors", "generation_config.json"] {
        std::fs::copy(fixture(NAME).join(f), ck.join(f)).unwrap();
    }
    let mut cfg = json(&fixture(NAME).join("config.json"));
    cfg.as_object_mut().unwrap().remove("image_token_index");
    std::fs::write(ck.join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    let (_t, dir) = compile(&ck, Dtype::Fp32, QuantArg::None);
    let engine: DecoderConfig = serde_json::from_value(json(&dir.join("engine.json"))).unwrap();
    assert_eq!(engine.io.token_type_ids, None);
    assert_eq!(engine.embed.unwrap().image_token_id, None);
    run_tokens(&dir, &g.prompt, &g.generated, &g.logits, TOL);
}
