//! Gemma 3's image encoder as its own graph, `vision.onnx`: the SigLIP vision tower and the
//! multimodal projector, pixels in, text-width image features out.
//!
//! ```text
//! pixel_values [b, C, S, S] (float32) ─ Cast(dtype) ─ Reshape/Transpose into patches [b, P, C·p·p]
//!   ─ MatMul(patch_embedding) ─ Add(bias + position_embedding)
//! per layer: LayerNorm ─ MatMul(q|k|v, fused) ─ Split ─ MultiHeadAttention(+q/k/v bias)
//!   ─ MatMul(out_proj) ─ SkipLayerNorm(+out bias, +residual) ─ MatMul(fc1) ─ FastGelu(+fc1 bias)
//!   ─ MatMul(fc2) ─ [fc2 bias and residual go into the next SkipLayerNorm]
//! SkipLayerNorm(post_layernorm) ─ Reshape [b, t, k, t, k, D] ─ ReduceMean(k, k)  (= AvgPool k×k)
//!   ─ Reshape [b, t·t, D] ─ SimplifiedLayerNorm(1 + mm_soft_emb_norm) ─ MatMul(mm_input_projection)
//!   ─ image_features [b, mm_tokens, text_hidden]
//! ```
//! The patch convolution (kernel = stride = patch, no padding) is the same product as a MatMul over
//! flattened patches, which runs in every dtype on every execution provider; the average pool is a
//! mean over a reshaped grid for the same reason. `gelu_pytorch_tanh` is FastGelu's formula.
//! Residual adds ride on SkipLayerNormalization, biases on the ops that take them.

pub mod config;
mod projector;

use super::Dtype;
use crate::arch::graph;
use crate::checkpoint::{Tensor, TensorSource};
use crate::format::FileEntry;
use crate::onnx::{Attr, DataType, GraphBuilder, MS_DOMAIN, MS_OPSET, ONNX_OPSET};
use crate::quant::{Scheme, TensorReport};
use crate::Error;
pub use config::{Gemma3Config, SiglipVisionConfig, VisionNames, VisionSpec};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const GRAPH: &str = "vision.onnx";
pub const DATA: &str = "vision.onnx.data";
pub const PIXEL_VALUES: &str = "pixel_values";
pub const IMAGE_FEATURES: &str = "image_features";

#[derive(Debug, Clone, Copy)]
pub struct VisionOptions {
    pub dtype: Dtype,
    /// The tower's q/k/v, out_proj, fc1 and fc2; the patch embedding and the projector stay in
    /// the compute dtype.
    pub linear: Scheme,
}

/// What the engine needs to run `vision.onnx` (a section for `engine.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VisionGraphConfig {
    pub graph: String,
    /// Input: float32 `[batch, channels, image_size, image_size]`, already rescaled and
    /// normalised as the processor does it.
    pub pixel_values: String,
    /// Output: `[batch, mm_tokens_per_image, text_hidden_size]` in `dtype`.
    pub image_features: String,
    pub channels: usize,
    pub image_size: usize,
    pub mm_tokens_per_image: usize,
    pub text_hidden_size: usize,
    /// Element type of `image_features`: `float32`, `float16` or `bfloat16`.
    pub dtype: String,
    pub image_token_id: u32,
    pub boi_token_id: u32,
    pub eoi_token_id: u32,
}

pub struct VisionBuild {
    pub config: VisionGraphConfig,
    /// Digest of `vision.onnx.data` (hashed while written).
    pub data: FileEntry,
    pub reports: Vec<TensorReport>,
}

/// Writes `vision.onnx` and `vision.onnx.data` into `out_dir`.
pub fn build_vision(
    spec: &VisionSpec,
    src: &dyn TensorSource,
    out_dir: &Path,
    opts: &VisionOptions,
) -> Result<VisionBuild, Error> {
    let names = VisionNames::find(src)?;
    let mut g = GraphBuilder::new("vision_graph", &out_dir.join(DATA), DATA)?;
    let reports = emit(spec, &names, src, &mut g, opts)?;
    let data = g.finish(
        &out_dir.join(GRAPH),
        &[("", ONNX_OPSET), (MS_DOMAIN, MS_OPSET)],
    )?;
    Ok(VisionBuild {
        config: VisionGraphConfig {
            graph: GRAPH.into(),
            pixel_values: PIXEL_VALUES.into(),
            image_features: IMAGE_FEATURES.into(),
            channels: spec.channels,
            image_size: spec.image_size,
            mm_tokens_per_image: spec.mm_tokens,
            text_hidden_size: spec.text_hidden,
            dtype: opts.dtype.element_name().into(),
            image_token_id: spec.image_token_id,
            boi_token_id: spec.boi_token_id,
            eoi_token_id: spec.eoi_token_id,
        },
        data,
        reports,
    })
}

struct Ctx<'a> {
    g: &'a mut GraphBuilder,
    src: &'a dyn TensorSource,
    dtype: Dtype,
    reports: Vec<TensorReport>,
}

impl Ctx<'_> {
    fn weight(&mut self, name: &str, t: &Tensor) -> Result<String, Error> {
        graph::weight(self.g, self.dtype, name, t)
    }

    fn load(&self, name: &str, shape: &[usize]) -> Result<Tensor, Error> {
        self.src.get_shaped(name, shape)
    }

    /// `x @ W^T` (no bias) for `W[N, K]`: MatMul on the transposed weight, or MatMulNBits.
    fn linear(&mut self, name: &str, x: &str, w: &Tensor, scheme: Scheme) -> Result<String, Error> {
        graph::linear(self.g, self.dtype, &mut self.reports, name, x, w, scheme)
    }
}

/// Emits the vision graph into `g`; returns the quantisation reports of the tower's linears.
pub fn emit(
    spec: &VisionSpec,
    names: &VisionNames,
    src: &dyn TensorSource,
    g: &mut GraphBuilder,
    opts: &VisionOptions,
) -> Result<Vec<TensorReport>, Error> {
    let dt = opts.dtype.onnx();
    let (c, s, p, d) = (spec.channels, spec.image_size, spec.patch_size, spec.hidden);
    let grid = spec.patches_per_side();
    let patches = grid * grid;
    let b = "batch_size";
    g.input(
        PIXEL_VALUES,
        DataType::Float,
        &[b.into(), c.into(), s.into(), s.into()],
    );
    g.output(
        IMAGE_FEATURES,
        dt,
        &[b.into(), spec.mm_tokens.into(), spec.text_hidden.into()],
    );
    let mut cx = Ctx {
        g,
        src,
        dtype: opts.dtype,
        reports: Vec::new(),
    };
    let t = &names.tower;

    // Patches: [b, C, g·p, g·p] → [b, C, g, p, g, p] → [b, g, g, C, p, p] → [b, P, C·p·p], the
    // order in which the conv weight [D, C, p, p] flattens.
    let pixels = if opts.dtype == Dtype::Fp32 {
        PIXEL_VALUES.to_string()
    } else {
        cx.g.op(
            "/vision/embeddings/Cast",
            "Cast",
            &[PIXEL_VALUES],
            &[("to", Attr::Int(dt as i64))],
        )
    };
    let (gi, ci, pi) = (grid as i64, c as i64, p as i64);
    let split = cx.g.const_i64(
        "/vision/embeddings/patch_shape",
        &[6],
        &[0, ci, gi, pi, gi, pi],
    );
    let x = cx.g.op(
        "/vision/embeddings/Reshape",
        "Reshape",
        &[&pixels, &split],
        &[],
    );
    let x = cx.g.op(
        "/vision/embeddings/Transpose",
        "Transpose",
        &[&x],
        &[("perm", Attr::Ints(vec![0, 2, 4, 1, 3, 5]))],
    );
    let flat = cx.g.const_i64(
        "/vision/embeddings/flat_shape",
        &[3],
        &[0, (grid * grid) as i64, ci * pi * pi],
    );
    let x =
        cx.g.op("/vision/embeddings/Reshape_1", "Reshape", &[&x, &flat], &[]);
    let mut conv = cx.load(
        &format!("{t}embeddings.patch_embedding.weight"),
        &[d, c, p, p],
    )?;
    conv.shape = vec![d, c * p * p];
    let pe = cx.linear(
        &format!("{t}embeddings.patch_embedding"),
        &x,
        &conv,
        Scheme::None,
    )?;
    // The conv bias folded into the position table: one Add instead of two.
    let bias = cx.load(&format!("{t}embeddings.patch_embedding.bias"), &[d])?;
    let mut pos = cx.load(
        &format!("{t}embeddings.position_embedding.weight"),
        &[patches, d],
    )?;
    for row in pos.data.chunks_mut(d) {
        row.iter_mut().zip(&bias.data).for_each(|(v, b)| *v += b);
    }
    let pos = cx.weight(&format!("{t}embeddings.position_embedding_plus_bias"), &pos)?;
    let mut residual = cx.g.op("/vision/embeddings/Add", "Add", &[&pe, &pos], &[]);

    // The last fc2 output and its bias, not yet added to the residual.
    let mut pending: Option<(String, String)> = None;
    for i in 0..spec.layers {
        let l = format!("{t}encoder.layers.{i}");
        let ln1w = cx.load(&format!("{l}.layer_norm1.weight"), &[d])?;
        let ln1b = cx.load(&format!("{l}.layer_norm1.bias"), &[d])?;
        let ln1w = cx.weight(&format!("{l}.layer_norm1.weight"), &ln1w)?;
        let ln1b = cx.weight(&format!("{l}.layer_norm1.bias"), &ln1b)?;
        let h = match pending.take() {
            None => cx.g.op(
                &format!("/{l}/layer_norm1/LayerNormalization"),
                "LayerNormalization",
                &[&residual, &ln1w, &ln1b],
                &[("axis", Attr::Int(-1)), ("epsilon", Attr::Float(spec.eps))],
            ),
            Some((prev, prev_bias)) => {
                let (h, sum) = skip_layer_norm(
                    cx.g,
                    &format!("/{l}/layer_norm1/SkipLayerNorm"),
                    [&prev, &residual, &ln1w, &ln1b, &prev_bias],
                    spec.eps,
                );
                residual = sum;
                h
            }
        };

        // Attention: q|k|v in one product, their biases inside MultiHeadAttention.
        let a = format!("{l}.self_attn");
        let mut ws = Vec::new();
        let mut bs = Vec::new();
        for n in ["q_proj", "k_proj", "v_proj"] {
            ws.push(cx.load(&format!("{a}.{n}.weight"), &[d, d])?);
            bs.push(cx.load(&format!("{a}.{n}.bias"), &[d])?);
        }
        let qkv = cx.linear(
            &format!("{a}.qkv_proj"),
            &h,
            &Tensor::concat_rows(&ws),
            opts.linear,
        )?;
        let qkv_bias: Vec<f32> = bs.into_iter().flat_map(|t| t.data).collect();
        let qkv_bias = cx.weight(
            &format!("{a}.qkv_proj.bias"),
            &Tensor::new(vec![3 * d], qkv_bias),
        )?;
        let parts = cx.g.node(
            &format!("/{a}/Split"),
            "Split",
            "",
            &[&qkv],
            3,
            &[("axis", Attr::Int(-1)), ("num_outputs", Attr::Int(3))],
        );
        let attn =
            cx.g.node(
                &format!("/{a}/MultiHeadAttention"),
                "MultiHeadAttention",
                MS_DOMAIN,
                &[&parts[0], &parts[1], &parts[2], &qkv_bias],
                1,
                &[
                    ("num_heads", Attr::Int(spec.heads as i64)),
                    ("scale", Attr::Float(1.0 / (spec.head_dim() as f32).sqrt())),
                ],
            )
            .remove(0);
        let ow = cx.load(&format!("{a}.out_proj.weight"), &[d, d])?;
        let ob = cx.load(&format!("{a}.out_proj.bias"), &[d])?;
        let o = cx.linear(&format!("{a}.out_proj"), &attn, &ow, opts.linear)?;
        let ob = cx.weight(&format!("{a}.out_proj.bias"), &ob)?;

        // MLP.
        let ln2w = cx.load(&format!("{l}.layer_norm2.weight"), &[d])?;
        let ln2b = cx.load(&format!("{l}.layer_norm2.bias"), &[d])?;
        let ln2w = cx.weight(&format!("{l}.layer_norm2.weight"), &ln2w)?;
        let ln2b = cx.weight(&format!("{l}.layer_norm2.bias"), &ln2b)?;
        let (h2, sum) = skip_layer_norm(
            cx.g,
            &format!("/{l}/layer_norm2/SkipLayerNorm"),
            [&o, &residual, &ln2w, &ln2b, &ob],
            spec.eps,
        );
        residual = sum;
        let m = format!("{l}.mlp");
        let fc1w = cx.load(&format!("{m}.fc1.weight"), &[spec.intermediate, d])?;
        let fc1b = cx.load(&format!("{m}.fc1.bias"), &[spec.intermediate])?;
        let f = cx.linear(&format!("{m}.fc1"), &h2, &fc1w, opts.linear)?;
        let fc1b = cx.weight(&format!("{m}.fc1.bias"), &fc1b)?;
        let act =
            cx.g.node(
                &format!("/{m}/act/FastGelu"),
                "FastGelu",
                MS_DOMAIN,
                &[&f, &fc1b],
                1,
                &[],
            )
            .remove(0);
        let fc2w = cx.load(&format!("{m}.fc2.weight"), &[d, spec.intermediate])?;
        let fc2b = cx.load(&format!("{m}.fc2.bias"), &[d])?;
        let out = cx.linear(&format!("{m}.fc2"), &act, &fc2w, opts.linear)?;
        let fc2b = cx.weight(&format!("{m}.fc2.bias"), &fc2b)?;
        pending = Some((out, fc2b));
    }

    let (last, last_bias) = pending.expect("at least one layer (checked by the spec)");
    let pw = cx.load(&format!("{t}post_layernorm.weight"), &[d])?;
    let pb = cx.load(&format!("{t}post_layernorm.bias"), &[d])?;
    let pw = cx.weight(&format!("{t}post_layernorm.weight"), &pw)?;
    let pb = cx.weight(&format!("{t}post_layernorm.bias"), &pb)?;
    let (x, _) = skip_layer_norm(
        cx.g,
        "/vision/post_layernorm/SkipLayerNorm",
        [&last, &residual, &pw, &pb, &last_bias],
        spec.eps,
    );

    projector::project(&mut cx, spec, names, &x)?;
    Ok(cx.reports)
}

/// SkipLayerNormalization over `[input, skip, gamma, beta, bias]`: returns (normalised,
/// input + skip + bias).
fn skip_layer_norm(g: &mut GraphBuilder, name: &str, ins: [&str; 5], eps: f32) -> (String, String) {
    let out = format!("{name}/output_0");
    let sum = format!("{name}/output_3");
    g.node_with(
        name,
        "SkipLayerNormalization",
        MS_DOMAIN,
        &ins,
        &[out.clone(), String::new(), String::new(), sum.clone()],
        &[("epsilon", Attr::Float(eps))],
    );
    (out, sum)
}
