//! Weight-only quantisation of linear layers into ONNX Runtime's `MatMulNBits` layout.
//!
//! Layout (com.microsoft MatMulNBits): for a weight `W[N, K]` (out, in) and block size `B`,
//! `B` input is uint8 `[N, ceil(K/B), B*bits/8]`, values of one row packed along K, the lower
//! bits holding the earlier element; `scales` is `[N * ceil(K/B)]` in the compute dtype; optional
//! float `zero_points` likewise. Dequantised value = (q - zero_point) * scale, where the zero
//! point defaults to 2^(bits-1) when absent. K is zero-padded to a whole block.

pub mod emit;
pub mod hqq;
pub mod rtn;

use crate::checkpoint::Tensor;
use serde::Serialize;

/// How one linear weight is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Unquantised, in the compute dtype.
    None,
    /// Symmetric round-to-nearest, no zero points (the fast CUDA kernels' format).
    Rtn { bits: u8, block: usize },
    /// Half-quadratic quantisation: per-group scale and float zero point.
    Hqq { bits: u8, group: usize },
}

impl Scheme {
    /// Name in manifest.json, e.g. `rtn4-b32`, `hqq8-g64`, `none`.
    pub fn label(self) -> String {
        match self {
            Scheme::None => "none".into(),
            Scheme::Rtn { bits, block } => format!("rtn{bits}-b{block}"),
            Scheme::Hqq { bits, group } => format!("hqq{bits}-g{group}"),
        }
    }
}

/// The `--quant` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QuantArg {
    None,
    #[value(alias = "int4")]
    Rtn4,
    #[value(alias = "int8")]
    Rtn8,
    Hqq4,
    Hqq8,
}

impl QuantArg {
    pub fn scheme(self) -> Scheme {
        match self {
            QuantArg::None => Scheme::None,
            QuantArg::Rtn4 => Scheme::Rtn { bits: 4, block: 32 },
            QuantArg::Rtn8 => Scheme::Rtn { bits: 8, block: 32 },
            QuantArg::Hqq4 => Scheme::Hqq { bits: 4, group: 64 },
            QuantArg::Hqq8 => Scheme::Hqq { bits: 8, group: 64 },
        }
    }
}

/// Which scheme each tensor group gets. Embeddings and norms are never quantised; `lm_head`
/// stays in full precision by default because its error goes straight into the logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub linear: Scheme,
    pub lm_head: Scheme,
}

impl Policy {
    pub fn uniform(linear: Scheme) -> Self {
        Policy {
            linear,
            lm_head: Scheme::None,
        }
    }
}

/// A weight in MatMulNBits form.
pub struct Quantized {
    pub bits: u8,
    pub block: usize,
    pub n: usize,
    pub k: usize,
    pub k_blocks: usize,
    /// `[n, k_blocks, block*bits/8]`.
    pub packed: Vec<u8>,
    /// `[n * k_blocks]`.
    pub scales: Vec<f32>,
    /// Float zero points (HQQ) `[n * k_blocks]`, or none for the symmetric default.
    pub zero_points: Option<Vec<f32>>,
}

impl Quantized {
    /// Unpacks to `[n, k]` as MatMulNBits would see it; used for error reports and tests.
    pub fn dequantize(&self) -> Tensor {
        let default_zp = (1u32 << (self.bits - 1)) as f32;
        let blob = self.block * self.bits as usize / 8;
        let mut out = vec![0f32; self.n * self.k];
        for r in 0..self.n {
            for c in 0..self.k {
                let b = c / self.block;
                let i = c % self.block;
                let byte = self.packed[(r * self.k_blocks + b) * blob + i * self.bits as usize / 8];
                let q = match self.bits {
                    4 => (byte >> ((i % 2) * 4)) & 0xF,
                    _ => byte,
                } as f32;
                let s = self.scales[r * self.k_blocks + b];
                let zp = self
                    .zero_points
                    .as_ref()
                    .map_or(default_zp, |z| z[r * self.k_blocks + b]);
                out[r * self.k + c] = (q - zp) * s;
            }
        }
        Tensor::new(vec![self.n, self.k], out)
    }
}

/// Packs quantised integers `q[n, k_pad]` (k_pad a multiple of `block`) into MatMulNBits bytes.
pub(crate) fn pack(q: &[u8], bits: u8) -> Vec<u8> {
    match bits {
        4 => q.chunks_exact(2).map(|p| p[0] | (p[1] << 4)).collect(),
        8 => q.to_vec(),
        _ => unreachable!("only 4 and 8 bits are produced"),
    }
}

pub fn quantize(w: &Tensor, scheme: Scheme) -> Option<Quantized> {
    match scheme {
        Scheme::None => None,
        Scheme::Rtn { bits, block } => Some(rtn::quantize(w, bits, block)),
        Scheme::Hqq { bits, group } => Some(hqq::quantize(w, bits, group)),
    }
}

/// Quantisation error of one tensor, as reported in `quantization_report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct TensorReport {
    pub tensor: String,
    pub scheme: String,
    pub shape: Vec<usize>,
    /// ||W - deq(W)|| / ||W||.
    pub rel_rmse: f64,
    pub max_abs_err: f32,
}

pub fn report(name: &str, scheme: Scheme, w: &Tensor, q: &Quantized) -> TensorReport {
    let d = q.dequantize();
    let (mut num, mut den, mut max) = (0f64, 0f64, 0f32);
    for (a, b) in w.data.iter().zip(&d.data) {
        let e = a - b;
        num += (e as f64) * (e as f64);
        den += (*a as f64) * (*a as f64);
        max = max.max(e.abs());
    }
    TensorReport {
        tensor: name.to_string(),
        scheme: scheme.label(),
        shape: w.shape.clone(),
        rel_rmse: if den > 0.0 { (num / den).sqrt() } else { 0.0 },
        max_abs_err: max,
    }
}

/// Rows of `w` split into zero-padded groups of `block` along K: returns (k_blocks, padded rows).
pub(crate) fn padded_rows(w: &Tensor, block: usize) -> (usize, usize) {
    let k = w.shape[1];
    let k_blocks = k.div_ceil(block);
    (k_blocks, k_blocks * block)
}
