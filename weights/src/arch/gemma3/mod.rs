//! Gemma 3's language model: Gemma3ForCausalLM, or the `language_model` of
//! Gemma3ForConditionalGeneration. Two graphs, so that image features can be merged between them:
//!
//! - `embed.onnx` ([`embed`]): `input_ids` + `image_features` → `inputs_embeds` (scaled lookup,
//!   image-token rows replaced by the features);
//! - `decoder.onnx` ([`decoder`]): `inputs_embeds` + KV cache → `logits`, the same cache contract
//!   as the Llama-family `model.onnx` (engine.json's `io.inputs_embeds` names its first input).
//!
//! The embedding table is written once, in `decoder.onnx.data` (the tied lm_head reads it), and
//! `embed.onnx` points at those bytes. The vision tower (`vision.onnx`) is a separate builder's.

pub mod config;
pub mod decoder;
pub mod embed;
pub mod image_attn;
mod layer;
pub mod weights;

pub use config::{is_gemma3, Gemma3Spec, LayerType};

use crate::arch::{siglip, Dtype};
use crate::build::{self, BuildRequest, BuildSummary, Files, Staging};
use crate::checkpoint::safetensors::SafetensorsSource;
use crate::checkpoint::TensorSource;
use crate::onnx::{GraphBuilder, MS_DOMAIN, MS_OPSET, ONNX_OPSET};
use crate::prune::source::{PruneReport, PrunedSource};
use crate::quant::{Policy, QuantArg};
use crate::Error;
use std::collections::BTreeMap;

/// bf16 compute (fp16 overflows in Gemma's residual stream), no quantisation unless asked
/// (`--quant rtn8` is the int8 weight-only deployment).
pub fn defaults() -> (Dtype, QuantArg) {
    (Dtype::Bf16, QuantArg::None)
}

/// `cogrs weights build` for a Gemma 3 checkpoint folder.
pub fn build_folder(req: &BuildRequest) -> Result<BuildSummary, Error> {
    let dir = &req.input;
    let cfg_path = dir.join("config.json");
    let mut spec = Gemma3Spec::load(&cfg_path)?;
    for id in build::generation_eos(dir)? {
        if !spec.eos_token_ids.contains(&id) {
            spec.eos_token_ids.push(id);
        }
    }
    let source = SafetensorsSource::open_dir(dir)?;
    let extra = build::extra_files(dir)?;
    // Gemma3ForConditionalGeneration: its vision tower too.
    let vision = if has_vision(&cfg_path)? {
        Some(siglip::Gemma3Config::load(&cfg_path)?.vision_spec(&cfg_path)?)
    } else {
        None
    };
    build_source(req, &spec, &source, &extra, vision.as_ref())
}

/// `cogrs weights build` for a Gemma 3 GGUF file (llama.cpp's `gemma3`, text only): the tensors
/// and config through [`crate::gguf::gemma3`], the tokenizer rebuilt from its metadata.
pub fn build_gguf(req: &BuildRequest) -> Result<BuildSummary, Error> {
    let (cfg, source) = crate::gguf::gemma3::open(&req.input)?;
    let spec = Gemma3Spec::from_json(&cfg, &req.input)?;
    let extra = crate::gguf::spm::gemma_files(source.gguf(), &spec.eos_token_ids)?;
    build_source(req, &spec, &source, &extra, None)
}

/// The build proper, from a spec, tensors under Hugging Face names and the side files.
fn build_source(
    req: &BuildRequest,
    spec: &Gemma3Spec,
    source: &dyn TensorSource,
    extra: &[(String, Vec<u8>)],
    vision: Option<&siglip::VisionSpec>,
) -> Result<BuildSummary, Error> {
    let names = weights::Names::resolve(source)?;
    let prune = match &req.prune {
        None => None,
        Some(p) => Some((p, p.resolve(Some("gemma3"))?)),
    };

    let staging = Staging::new(&req.output, req.force)?;
    let tmp = staging.path();
    let (d_dtype, d_quant) = defaults();
    let dtype = req.dtype.unwrap_or(d_dtype);
    let policy = Policy::uniform(req.quant.unwrap_or(d_quant).scheme());
    let opts = decoder::Options {
        dtype,
        policy,
        compact: req.prune.as_ref().is_some_and(|p| p.compact),
    };

    let pruned = prune
        .as_ref()
        .map(|(p, (map, _))| PrunedSource::new(source, map, p));
    let src: &dyn TensorSource = match &pruned {
        Some(p) => p,
        None => source,
    };

    let mut g = GraphBuilder::new(
        "gemma3_decoder",
        &tmp.join("decoder.onnx.data"),
        "decoder.onnx.data",
    )?;
    let built = decoder::build(spec, &names, src, &mut g, &opts)?;
    let opsets = [("", ONNX_OPSET), (MS_DOMAIN, MS_OPSET)];
    let decoder_data = g.finish(&tmp.join("decoder.onnx"), &opsets)?;

    let embed_data_path = tmp.join("embed.onnx.data");
    let mut g = GraphBuilder::new("gemma3_embed", &embed_data_path, "embed.onnx.data")?;
    let own;
    let table = match &built.embed_table {
        Some(r) => embed::Table::Shared(r),
        None => {
            own = src.get_shaped(&names.embed(), &[spec.vocab, spec.hidden])?;
            embed::Table::Own(&own)
        }
    };
    let embed_cfg = embed::build(spec, &mut g, dtype, table)?;
    let embed_data = g.finish(&tmp.join("embed.onnx"), &opsets)?;
    let mut known = BTreeMap::new();
    known.insert("decoder.onnx.data".to_string(), decoder_data);
    if embed_data.size == 0 {
        // Every initializer points into decoder.onnx.data.
        std::fs::remove_file(&embed_data_path).map_err(|e| Error::io(&embed_data_path, e))?;
    } else {
        known.insert("embed.onnx.data".to_string(), embed_data);
    }
    // Gemma3ForConditionalGeneration: vision.onnx (SigLIP + projector), whose output rows are
    // the embed graph's `image_features`. Its linears get the decoder's quantisation (the issue's
    // int8 of "the decoder and vision linears"); pruning never touches it (outside the map).
    let mut reports = built.reports;
    let vision = if let Some(vspec) = vision {
        let vb = siglip::build_vision(
            vspec,
            src,
            tmp,
            &siglip::VisionOptions {
                dtype,
                linear: policy.linear,
            },
        )?;
        known.insert("vision.onnx.data".to_string(), vb.data);
        reports.extend(vb.reports);
        Some(vb.config)
    } else {
        None
    };

    let mut engine = built.config;
    engine.embed = Some(embed_cfg);
    engine.vision = vision;
    build::write_json(&tmp.join("engine.json"), &engine)?;
    let prune_report = match (pruned, &prune) {
        (Some(src), Some((p, (map, map_source)))) => Some(PruneReport::new(
            p,
            map,
            map_source,
            src.into_reports(),
            built.compaction,
        )),
        _ => None,
    };
    let files = Files {
        reports: &reports,
        prune: prune_report.as_ref(),
        extra,
    };
    let pruning = files.write(tmp)?;
    let manifest = build::manifest(req, "gemma3", dtype, policy, pruning, tmp, known)?;
    staging.commit()?;
    Ok(BuildSummary { manifest, reports })
}

/// Whether the checkpoint has a vision tower (`vision_config` in config.json).
fn has_vision(cfg_path: &std::path::Path) -> Result<bool, Error> {
    let v: serde_json::Value = crate::checkpoint::read_json(cfg_path)?;
    Ok(v.get("vision_config").is_some())
}
