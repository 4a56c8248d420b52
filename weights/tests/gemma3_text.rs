//! Gemma 3 text decoder (embed.onnx + decoder.onnx) against transformers on the tiny random
//! Gemma3ForCausalLM in fixtures/gemma3_text (weights/reference/gemma3_text_golden.py): fp32
//! logits within 1e-4 and identical greedy tokens through the KV cache, for token prompts and for
//! image-feature rows merged at image-token positions; the int8 build's greedy choices; pruning
//! builds' reports and what they leave untouched; the multimodal checkpoint layout.

mod common;

use cog_weights::arch::Dtype;
use cog_weights::build::{build, BuildRequest};
use cog_weights::checkpoint::safetensors::SafetensorsSource;
use cog_weights::checkpoint::TensorSource;
use cog_weights::format::{DecoderConfig, Manifest};
use cog_weights::prune::source::{PruneMethod, PruneRequest};
use cog_weights::quant::QuantArg;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

const TOL: f32 = 1e-4;
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

fn compile_with(
    input: &Path,
    quant: QuantArg,
    prune: Option<PruneRequest>,
) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    build(&request(input, &out, quant, prune)).unwrap_or_else(|e| panic!("build: {e}"));
    (tmp, out)
}

fn json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn ints(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
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

/// A `[rows, cols]` fp32 initializer of a compiled graph, read from its external data file.
fn initializer(dir: &Path, graph: &str, name: &str) -> (Vec<usize>, Vec<f32>) {
    use cog_weights::onnx::proto::ModelProto;
    use prost::Message;
    let model = ModelProto::decode(&*std::fs::read(dir.join(graph)).unwrap()).unwrap();
    let t = model
        .graph
        .unwrap()
        .initializer
        .into_iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("{graph} has no initializer {name}"));
    let get = |k: &str| {
        t.external_data
            .iter()
            .find(|e| e.key == k)
            .unwrap()
            .value
            .clone()
    };
    let data = std::fs::read(dir.join(get("location"))).unwrap();
    let (off, len): (usize, usize) = (
        get("offset").parse().unwrap(),
        get("length").parse().unwrap(),
    );
    let vals = data[off..off + len]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (t.dims.iter().map(|&d| d as usize).collect(), vals)
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
    let (_tmp, dir) = compile_with(
        &fixture(NAME),
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
    let (_tmp, dir) = compile_with(
        &fixture(NAME),
        QuantArg::None,
        prune_req(PruneMethod::Gradual, 0.25, false),
    );
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
    let (_a, plain) = compile_with(
        &fixture(NAME),
        QuantArg::None,
        prune_req(PruneMethod::Structured, 0.5, false),
    );
    let (_b, compact) = compile_with(
        &fixture(NAME),
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
    let (_c, q8) = compile_with(
        &fixture(NAME),
        QuantArg::Rtn8,
        prune_req(PruneMethod::Structured, 0.5, true),
    );
    let top: Vec<usize> = logits(&q8).iter().map(|r| argmax(r)).collect();
    eprintln!("structured 50% + compact + int8: prefill top-1 {top:?}");
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
        "image_token_index": 256, "text_config": text,
        "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 32}
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

    let (_t, dir) = compile(&ck, Dtype::Fp32, QuantArg::None);
    let engine: DecoderConfig = serde_json::from_value(json(&dir.join("engine.json"))).unwrap();
    assert_eq!(engine.embed.unwrap().image_token_id, Some(256));
    run_tokens(&dir, &g.prompt, &g.generated, &g.logits, TOL);
}

/// bf16, the default compute dtype: the folder and engine.json say so, and the embedding graph
/// (Gather, an f32 multiply rounded once, ScatterND) reproduces the fp32 merge to bf16 rounding.
/// (The bf16 decoder needs a CUDA device: ONNX Runtime's CPU GroupQueryAttention has no bf16.)
#[test]
fn bf16_is_the_default() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let mut req = request(&fixture(NAME), &out, QuantArg::None, None);
    req.dtype = None;
    let summary = build(&req).unwrap();
    assert_eq!(summary.manifest.dtype, "bf16");
    assert_eq!(summary.manifest.quantization["linear"], "none");
    let engine: DecoderConfig = serde_json::from_value(json(&out.join("engine.json"))).unwrap();
    assert_eq!(engine.kv_dtype, "bfloat16");
    assert_eq!(
        engine.embed.unwrap().embed_scale,
        half::bf16::from_f32(48f32.sqrt()).to_f32()
    );
}
