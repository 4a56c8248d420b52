//! `cogrs weights build` for a diffusers FLUX pipeline folder (`model_index.json`, `transformer/`,
//! `vae/`, `text_encoder/`, `text_encoder_2/`, `tokenizer/`, `tokenizer_2/`, `scheduler/`): every
//! graph, the LoRAs given at build time packed into slot tensors, the tokenizer files, and
//! `pipeline.json` describing how the engine puts them together. One flat folder:
//!
//! ```text
//! pipeline.json                 PipelineDescription (below)
//! transformer.onnx(.data), transformer.json   FLUX transformer (LoRA slots when --lora given)
//! clip.onnx, t5.onnx, vae_decoder.onnx, vae_encoder.onnx (+ .data)
//! clip_merges.txt               tokenizer/merges.txt (CLIP BPE merges, header line first)
//! t5_tokenizer.json             tokenizer_2/tokenizer.json
//! lora_slots.safetensors        f32 `lora.<module>.a_t` [in, R] / `.b_t` [R, out] of every slot
//! manifest.json                 sha256 of every file
//! ```

use super::flux::{self, slots::Slots, LoraSlotSpec, TransformerOptions};
use super::flux_encoders::{self, EncoderOptions};
use super::{clip::ClipTextConfig, t5::T5Config, vae::VaeConfig, Dtype};
use crate::build::{BuildRequest, BuildSummary, Staging};
use crate::format::{Manifest, FORMAT_VERSION};
use crate::quant::{QuantArg, Scheme};
use crate::Error;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const DESCRIPTION_FILE: &str = "pipeline.json";
pub const LORA_FILE: &str = "lora_slots.safetensors";
pub const CLIP_MERGES: &str = "clip_merges.txt";
pub const T5_TOKENIZER: &str = "t5_tokenizer.json";

/// A diffusers FLUX pipeline folder: `model_index.json` naming a Flux pipeline class.
pub fn is_flux_pipeline(dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join("model_index.json")) else {
        return false;
    };
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["_class_name"].as_str().map(|c| c.starts_with("Flux")))
        .unwrap_or(false)
}

/// A LoRA to pack: `--lora NAME=FILE` (NAME: the trigger set that switches it on, e.g.
/// `open-image-preferences` or `ghibsky`) or `--lora FILE` (named after the file's stem).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraArg {
    pub name: String,
    pub path: PathBuf,
}

impl std::str::FromStr for LoraArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, path) = match s.split_once('=') {
            Some((n, p)) if !n.is_empty() => (n.to_string(), PathBuf::from(p)),
            _ => {
                let p = PathBuf::from(s);
                let stem = p.file_stem().map(|s| s.to_string_lossy().into_owned());
                (stem.ok_or("a LoRA file path")?, p)
            }
        };
        Ok(LoraArg { name, path })
    }
}

/// `pipeline.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PipelineDescription {
    pub format_version: u32,
    /// `transformer.json` (graph I/O, LoRA slot inputs, dtype).
    pub transformer: String,
    pub clip: EncoderGraph,
    pub t5: EncoderGraph,
    pub vae_decoder: EncoderGraph,
    pub vae_encoder: EncoderGraph,
    pub vae: VaeInfo,
    pub scheduler: SchedulerInfo,
    pub tokenizers: Tokenizers,
    /// The LoRAs packed at build time; absent when none were given.
    pub lora: Option<LoraPack>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EncoderGraph {
    pub graph: String,
    /// `float32`, `float16` or `bfloat16` (inputs/outputs other than ids).
    pub dtype: String,
    /// The text encoders' vocabulary (ids at or above it cannot be embedded); 0 for the VAE.
    #[serde(default)]
    pub vocab_size: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VaeInfo {
    pub scaling_factor: f64,
    pub shift_factor: f64,
    pub latent_channels: usize,
    /// Image pixels per latent pixel (8).
    pub scale_factor: usize,
}

/// `scheduler/scheduler_config.json` (FlowMatchEulerDiscreteScheduler), the values FLUX uses.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SchedulerInfo {
    #[serde(default = "d_true")]
    pub use_dynamic_shifting: bool,
    #[serde(default = "d_base_len")]
    pub base_image_seq_len: usize,
    #[serde(default = "d_max_len")]
    pub max_image_seq_len: usize,
    #[serde(default = "d_base_shift")]
    pub base_shift: f64,
    #[serde(default = "d_max_shift")]
    pub max_shift: f64,
}

fn d_true() -> bool {
    true
}
fn d_base_len() -> usize {
    256
}
fn d_max_len() -> usize {
    4096
}
fn d_base_shift() -> f64 {
    0.5
}
fn d_max_shift() -> f64 {
    1.15
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Tokenizers {
    pub clip_merges: String,
    pub t5: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LoraPack {
    /// `lora_slots.safetensors`: one tensor per slot input of the transformer graph, f32.
    pub file: String,
    /// Total slot rank R (the sum of the LoRAs' ranks).
    pub rank: usize,
    /// In packing order; LoRA i owns slot columns `segment[0]..segment[1]`.
    pub loras: Vec<PackedLora>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PackedLora {
    /// The trigger set that switches it on (`open-image-preferences`, `ghibsky`, ...).
    pub name: String,
    /// The file it was converted from, as given.
    pub source: String,
    pub segment: [usize; 2],
    /// Modules it adapts.
    pub modules: usize,
}

/// Builds the folder. `req.dtype` (default bf16) applies to every graph; `req.quant` (default
/// `rtn8`) to the transformer blocks' linears and T5's; `none` switches it off.
pub fn build_folder(req: &BuildRequest, loras: &[LoraArg]) -> Result<BuildSummary, Error> {
    let dir = &req.input;
    if req.prune.is_some() {
        return Err(Error::Unsupported(
            "--prune is not supported for FLUX".into(),
        ));
    }
    let dtype = req.dtype.unwrap_or(Dtype::Bf16);
    let quant = req.quant.unwrap_or(QuantArg::Rtn8).scheme();
    let staging = Staging::new(&req.output, req.force)?;
    let tmp = staging.path();

    let (slots, packed) = pack_loras(loras)?;
    let mut topts = TransformerOptions::new(dtype);
    topts.blocks = quant;
    topts.lora = slots.as_ref().map(LoraSlotSpec::from_slots);
    let tb = flux::build_transformer(&dir.join("transformer"), tmp, &topts)?;
    let eopts = EncoderOptions {
        clip_dtype: dtype,
        t5_dtype: dtype,
        t5_linear: quant,
        vae_dtype: dtype,
    };
    let enc = flux_encoders::build(dir, tmp, &eopts)?;
    let mut known = tb.files.clone();
    let mut reports = tb.reports.clone();
    for g in enc.all() {
        known.insert(g.data.clone(), g.data_entry.clone());
        reports.extend(g.reports.iter().cloned());
    }
    copy(&dir.join("tokenizer/merges.txt"), &tmp.join(CLIP_MERGES))?;
    copy(
        &dir.join("tokenizer_2/tokenizer.json"),
        &tmp.join(T5_TOKENIZER),
    )?;
    let lora = match (&slots, packed) {
        (Some(s), Some(p)) => {
            write_slots(s, &tmp.join(LORA_FILE))?;
            Some(p)
        }
        _ => None,
    };

    let vae = VaeConfig::load(&dir.join("vae"))?;
    let graph = |g: &super::nn::BuiltGraph, vocab: usize| EncoderGraph {
        graph: g.graph.clone(),
        dtype: g.dtype.element_name().into(),
        vocab_size: vocab,
    };
    let sched_path = dir.join("scheduler/scheduler_config.json");
    let scheduler: SchedulerInfo = if sched_path.is_file() {
        crate::checkpoint::read_json(&sched_path)?
    } else {
        serde_json::from_str("{}").expect("defaults")
    };
    let desc = PipelineDescription {
        format_version: FORMAT_VERSION,
        transformer: flux::ENGINE_FILE.into(),
        clip: graph(
            &enc.clip,
            ClipTextConfig::load(&dir.join("text_encoder"))?.vocab_size,
        ),
        t5: graph(
            &enc.t5,
            T5Config::load(&dir.join("text_encoder_2"))?.vocab_size,
        ),
        vae_decoder: graph(&enc.vae_decoder, 0),
        vae_encoder: graph(&enc.vae_encoder, 0),
        vae: VaeInfo {
            scaling_factor: vae.scaling_factor,
            shift_factor: vae.shift_factor.unwrap_or(0.0),
            latent_channels: vae.latent_channels,
            scale_factor: vae.scale_factor(),
        },
        scheduler,
        tokenizers: Tokenizers {
            clip_merges: CLIP_MERGES.into(),
            t5: T5_TOKENIZER.into(),
        },
        lora,
    };
    crate::build::write_json(&tmp.join(DESCRIPTION_FILE), &desc)?;

    let mut quantization = BTreeMap::new();
    quantization.insert("transformer_blocks".into(), quant.label());
    quantization.insert("t5_linear".into(), quant.label());
    quantization.insert("other".into(), Scheme::None.label());
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        architecture: "flux".into(),
        dtype: dtype.name().into(),
        quantization,
        files: crate::build::hash_dir_with(tmp, known)?,
        tool_version: env!("CARGO_PKG_VERSION").into(),
        command: req.command.clone(),
        pruning: None,
    };
    crate::build::write_json(&tmp.join("manifest.json"), &manifest)?;
    staging.commit()?;
    Ok(BuildSummary { manifest, reports })
}

fn copy(from: &Path, to: &Path) -> Result<(), Error> {
    if !from.is_file() {
        return Err(Error::MissingFile {
            path: from.to_path_buf(),
            why: "a FLUX pipeline folder needs its tokenizer files".into(),
        });
    }
    std::fs::copy(from, to).map_err(|e| Error::io(from, e))?;
    Ok(())
}

fn pack_loras(loras: &[LoraArg]) -> Result<(Option<Slots>, Option<LoraPack>), Error> {
    if loras.is_empty() {
        return Ok((None, None));
    }
    let bad = |p: &Path, msg: String| Error::Config {
        path: p.to_path_buf(),
        msg,
    };
    let loaded = loras
        .iter()
        .map(|l| flux::lora::load(&l.path).map_err(|e| bad(&l.path, e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let refs: Vec<_> = loaded.iter().collect();
    let slots = Slots::pack(&refs).map_err(|e| bad(&loras[0].path, e.to_string()))?;
    let pack = LoraPack {
        file: LORA_FILE.into(),
        rank: slots.rank,
        loras: loras
            .iter()
            .zip(&loaded)
            .zip(&slots.segments)
            .map(|((a, l), seg)| PackedLora {
                name: a.name.clone(),
                source: a.path.display().to_string(),
                segment: [seg.start, seg.end],
                modules: l.layers.len(),
            })
            .collect(),
    };
    Ok((Some(slots), Some(pack)))
}

/// The slot tensors under the transformer graph's input names, in the graph's layouts (Aᵀ, Bᵀ).
fn write_slots(slots: &Slots, path: &Path) -> Result<(), Error> {
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (module, w) in &slots.modules {
        let (a_name, b_name) = flux::config::lora_input_names(module);
        for (name, m) in [(a_name, w.a_t()), (b_name, w.b_t())] {
            let bytes = m.data.iter().flat_map(|x| x.to_le_bytes()).collect();
            tensors.push((name, vec![m.rows, m.cols], bytes));
        }
    }
    let views = tensors
        .iter()
        .map(|(n, shape, bytes)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|v| (n.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Internal(e.to_string()))?;
    safetensors::serialize_to_file(views, None, path).map_err(|e| Error::Internal(e.to_string()))
}
