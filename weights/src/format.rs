//! The compiled-folder format: `manifest.json` (what was built, from what, every file's digest) and
//! `engine.json` (what the engine needs to run the graphs). Both are versioned; readers refuse a
//! newer major version rather than guess.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Bumped on any change a reader of an older version could misread.
pub const FORMAT_VERSION: u32 = 1;

/// `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format_version: u32,
    /// The architecture the builder used, e.g. `llama`, `smollm3`, `phi3`, `gemma3`, `flux`.
    pub architecture: String,
    /// Compute dtype of the graphs: `fp32`, `fp16` or `bf16`.
    pub dtype: String,
    /// Quantisation per tensor group, e.g. `{"linear": "hqq4-g64", "lm_head": "none"}`.
    pub quantization: BTreeMap<String, String>,
    /// Every file of the folder but the manifest itself, by path relative to the folder.
    pub files: BTreeMap<String, FileEntry>,
    /// `cogrs` version that built it.
    pub tool_version: String,
    /// The exact command line that built it.
    pub command: Vec<String>,
    /// Pruning applied before quantisation, if any (absent in folders built without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruning: Option<PruningRecord>,
}

/// What pruning did, in brief; the per-tensor report is the file named by `report`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PruningRecord {
    /// `magnitude`, `gradual` or `structured`.
    pub method: String,
    /// The sparsity asked for, per allowed tensor.
    pub sparsity: f64,
    /// Gradual only: the number of steps of the cubic schedule.
    #[serde(default)]
    pub gradual_steps: Option<usize>,
    /// Structured only: dead MLP channels were dropped (shapes shrink).
    #[serde(default)]
    pub compact: bool,
    /// The filter map's `model` line, and the file it came from (`builtin:gemma3` for the shipped one).
    pub filter_map: String,
    pub filter_map_source: String,
    /// Per-tensor report file in the folder (`prune_report.json`).
    pub report: String,
    pub pruned_tensors: usize,
    pub skipped_tensors: usize,
    /// Zeros over the weights of the pruned tensors.
    pub sparsity_of_pruned: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileEntry {
    pub sha256: String,
    pub size: u64,
}

/// `engine.json` for a decoder-only language model (`model.onnx`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DecoderConfig {
    pub format_version: u32,
    /// Graph file, relative to the folder (`model.onnx`).
    pub graph: String,
    pub num_layers: usize,
    /// Query heads (added after the first draft; readers of older folders may default it).
    #[serde(default)]
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub hidden_size: usize,
    pub vocab_size: usize,
    /// Longest sequence (prompt + generated) the graph and cache support.
    pub context_length: usize,
    /// `float32`, `float16` or `bfloat16`: element type of logits and the KV cache.
    pub kv_dtype: String,
    pub io: DecoderIo,
    pub tokens: SpecialTokens,
    /// Models whose decoder takes `inputs_embeds` (Gemma 3): the graph that makes them, run first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embed: Option<EmbedGraph>,
    /// Multimodal models (Gemma 3): the vision tower + projector graph whose output rows are the
    /// embed graph's `image_features`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vision: Option<crate::arch::siglip::VisionGraphConfig>,
}

/// `embed.onnx`: token ids (and image features) in, `inputs_embeds` for the decoder out.
///
/// `inputs_embeds[b, t] = embed_tokens[input_ids[b, t]] · embed_scale`, except at positions where
/// `input_ids == image_token_id`, which take the rows of `image_features` in order (row-major over
/// batch then position), as transformers' `masked_scatter` does. The number of image-token
/// positions must equal the number of feature rows (the run fails otherwise); text-only calls pass
/// a `[0, hidden]` tensor. The features are what the vision graph (`vision.onnx`, written by the
/// vision builder, not this one) outputs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EmbedGraph {
    /// Graph file, relative to the folder (`embed.onnx`).
    pub graph: String,
    /// int64 [batch, seq].
    pub input_ids: String,
    /// Compute dtype (`kv_dtype`) [num_image_tokens, hidden].
    pub image_features: String,
    /// Compute dtype [batch, seq, hidden]; the decoder input of the same name.
    pub inputs_embeds: String,
    /// The placeholder token image features replace; `None` for text-only checkpoints (then
    /// `image_features` must have zero rows and is ignored).
    pub image_token_id: Option<u32>,
    /// The multiplier applied to embedding rows (√hidden rounded to the compute dtype).
    pub embed_scale: f32,
}

/// Tensor names of the decoder graph. Per-layer names use `{i}` for the layer index.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DecoderIo {
    /// `input_ids` (int64 [batch, seq]); absent when the graph takes `inputs_embeds` only.
    pub input_ids: Option<String>,
    /// `inputs_embeds` ([batch, seq, hidden]) for graphs that merge image features.
    pub inputs_embeds: Option<String>,
    /// `attention_mask` (int64 [batch, past + seq]).
    pub attention_mask: String,
    /// `past_key_values.{i}.key`, `past_key_values.{i}.value` ([batch, kv_heads, past, head_dim]).
    pub past_key: String,
    pub past_value: String,
    /// `present.{i}.key`, `present.{i}.value`.
    pub present_key: String,
    pub present_value: String,
    /// `logits` ([batch, seq, vocab]).
    pub logits: String,
    /// Gemma 3 with images: `token_type_ids` (int64 [batch, seq], 1 at image tokens, else 0, as
    /// the processor makes them). Tokens of one image attend to each other in both directions;
    /// an image's tokens must all be in the same call. Text-only calls pass zeros.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_type_ids: Option<String>,
    /// True when past and present may be bound to one buffer allocated at `context_length`
    /// (GroupQueryAttention grows the cache in place).
    pub shared_kv_buffer: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SpecialTokens {
    pub bos_token_id: Option<u32>,
    /// Generation stops on any of these.
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
}

impl DecoderIo {
    /// Expands a per-layer name template.
    pub fn layer(template: &str, i: usize) -> String {
        template.replace("{i}", &i.to_string())
    }
}
