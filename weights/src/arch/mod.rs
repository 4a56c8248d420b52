//! Architecture descriptions and graph builders.

pub mod clip;
pub mod decoder;
pub mod flux;
pub mod flux_encoders;
pub mod flux_pipeline;
pub mod gemma3;
pub mod graph;
pub mod nn;
pub mod rope;
pub mod siglip;
pub mod t5;
pub mod vae;
pub mod weights;

use crate::onnx::DataType;
use half::{bf16, f16};

/// Decoder-only families the builder knows. They differ in weight names and fusion, and in which
/// layers use rotary embeddings; the graph is the same Llama-style stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Llama, SmolLM2, Mistral-without-sliding-window: separate q/k/v and gate/up projections.
    Llama,
    /// SmolLM3: Llama weights, NoPE on some layers, tied embeddings.
    SmolLM3,
    /// Phi-3 / Phi-4: fused `qkv_proj` and `gate_up_proj`, untied lm_head.
    Phi3,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::SmolLM3 => "smollm3",
            Arch::Phi3 => "phi3",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    Linear {
        factor: f64,
    },
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    pub theta: f64,
    pub scaling: Option<RopeScaling>,
}

/// Everything the decoder builder needs, normalised from `config.json` or GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderSpec {
    pub arch: Arch,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub eps: f32,
    pub rope: Rope,
    /// Per layer: true where the layer applies rotary embeddings (false: NoPE).
    pub rope_layers: Vec<bool>,
    pub tied: bool,
    pub context_length: usize,
    pub sliding_window: Option<usize>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
}

/// Compute dtype of the graph (activations, unquantised weights, KV cache, logits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Dtype {
    Fp32,
    Fp16,
    Bf16,
}

impl Dtype {
    pub fn onnx(self) -> DataType {
        match self {
            Dtype::Fp32 => DataType::Float,
            Dtype::Fp16 => DataType::Float16,
            Dtype::Bf16 => DataType::Bfloat16,
        }
    }
    /// Name in manifest.json.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::Fp32 => "fp32",
            Dtype::Fp16 => "fp16",
            Dtype::Bf16 => "bf16",
        }
    }
    /// Element type name in engine.json (`kv_dtype`).
    pub fn element_name(self) -> &'static str {
        match self {
            Dtype::Fp32 => "float32",
            Dtype::Fp16 => "float16",
            Dtype::Bf16 => "bfloat16",
        }
    }
    /// Little-endian bytes of `data` in this dtype (round to nearest even). The half-precision
    /// paths use `half`'s slice conversion, which takes the F16C instructions where present.
    pub fn encode(self, data: &[f32]) -> Vec<u8> {
        use half::slice::HalfFloatSliceExt;
        // Converted through a small buffer so a 1 GB embedding needs no second full-size copy.
        const CHUNK: usize = 4096;
        let mut out = Vec::with_capacity(data.len() * self.onnx().size());
        match self {
            Dtype::Fp32 => out.extend(data.iter().flat_map(|v| v.to_le_bytes())),
            Dtype::Fp16 => {
                let mut h = [f16::ZERO; CHUNK];
                for c in data.chunks(CHUNK) {
                    h[..c.len()].convert_from_f32_slice(c);
                    out.extend(h[..c.len()].iter().flat_map(|v| v.to_le_bytes()));
                }
            }
            Dtype::Bf16 => {
                let mut h = [bf16::ZERO; CHUNK];
                for c in data.chunks(CHUNK) {
                    h[..c.len()].convert_from_f32_slice(c);
                    out.extend(h[..c.len()].iter().flat_map(|v| v.to_le_bytes()));
                }
            }
        }
        out
    }
}
