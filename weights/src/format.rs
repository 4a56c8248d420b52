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
