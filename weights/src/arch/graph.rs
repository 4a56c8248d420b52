//! Graph pieces shared by the decoder builders (Llama family in [`super::decoder`], Gemma 3 in
//! [`super::gemma3`]): weights in the compute dtype, linears that may be quantised, the fused
//! RMSNorms, the KV-cache inputs and outputs, and the sequence lengths GroupQueryAttention reads
//! from the attention mask.

use super::Dtype;
use crate::checkpoint::Tensor;
use crate::format::DecoderIo;
use crate::onnx::{Attr, DataType, Dim, GraphBuilder, MS_DOMAIN};
use crate::quant::{self, Scheme, TensorReport};
use crate::Error;

pub const PAST_KEY: &str = "past_key_values.{i}.key";
pub const PAST_VALUE: &str = "past_key_values.{i}.value";
pub const PRESENT_KEY: &str = "present.{i}.key";
pub const PRESENT_VALUE: &str = "present.{i}.value";

/// Symbolic dimension names of the decoder contract.
pub const BATCH: &str = "batch_size";
pub const SEQ: &str = "sequence_length";
pub const PAST: &str = "past_sequence_length";
pub const TOTAL: &str = "total_sequence_length";

/// A graph under construction with its compute dtype and the quantisation reports so far.
pub struct Ctx<'a> {
    pub g: &'a mut GraphBuilder,
    pub dtype: Dtype,
    pub reports: Vec<TensorReport>,
}

impl Ctx<'_> {
    /// An initializer in the compute dtype.
    pub fn weight(&mut self, name: &str, t: &Tensor) -> Result<String, Error> {
        weight(self.g, self.dtype, name, t)
    }

    /// `x @ W^T` for `W[N, K]`, either as MatMul on the transposed weight or as MatMulNBits.
    pub fn linear(
        &mut self,
        name: &str,
        x: &str,
        w: &Tensor,
        scheme: Scheme,
    ) -> Result<String, Error> {
        linear(self.g, self.dtype, &mut self.reports, name, x, w, scheme)
    }

    /// The fused gated MLP of both decoder families, `down(act(gate) * up)`, where gate and up
    /// are the halves of `{p}.mlp.gate_up_proj`'s output; `act` emits the activation (SiLU for
    /// Llama, GELU-tanh for Gemma) on the gate half and returns its output.
    pub fn gated_mlp(
        &mut self,
        p: &str,
        x: &str,
        gate_up: &Tensor,
        down: &Tensor,
        scheme: Scheme,
        act: impl FnOnce(&mut GraphBuilder, &str) -> String,
    ) -> Result<String, Error> {
        let gu = self.linear(&format!("{p}.mlp.gate_up_proj"), x, gate_up, scheme)?;
        let parts = self.g.node(
            &format!("/{p}/mlp/Split"),
            "Split",
            "",
            &[&gu],
            2,
            &[("axis", Attr::Int(-1)), ("num_outputs", Attr::Int(2))],
        );
        let a = act(self.g, &parts[0]);
        let prod = self
            .g
            .op(&format!("/{p}/mlp/Mul"), "Mul", &[&a, &parts[1]], &[]);
        self.linear(&format!("{p}.mlp.down_proj"), &prod, down, scheme)
    }
}

// The free functions below are the one implementation behind every builder's context (this
// module's `Ctx`, `nn::Net`, SigLIP's and FLUX's): their structs differ in what else they carry,
// but a weight, a linear or a SiLU must come out as the same nodes and initializers in each.

/// An initializer named `name` in the compute dtype `dtype`, written to the data file.
pub fn weight(g: &mut GraphBuilder, dtype: Dtype, name: &str, t: &Tensor) -> Result<String, Error> {
    g.weight(name, dtype.onnx(), &t.shape, &dtype.encode(&t.data))
}

/// `x @ W^T` (no bias) for `W[N, K]` as transformers stores it: MatMul on the transposed weight
/// (`{name}.weight`, node `/{name}/MatMul`), or MatMulNBits when `scheme` quantises it, whose
/// error report is appended to `reports`.
pub fn linear(
    g: &mut GraphBuilder,
    dtype: Dtype,
    reports: &mut Vec<TensorReport>,
    name: &str,
    x: &str,
    w: &Tensor,
    scheme: Scheme,
) -> Result<String, Error> {
    match quant::quantize(w, scheme) {
        None => {
            let wt = weight(g, dtype, &format!("{name}.weight"), &w.transpose2())?;
            Ok(g.op(&format!("/{name}/MatMul"), "MatMul", &[x, &wt], &[]))
        }
        Some(q) => {
            reports.push(quant::report(name, scheme, w, &q));
            quant::emit::matmul_nbits(g, name, x, &q, dtype)
        }
    }
}

/// `x · sigmoid(x)` as nodes `{name}/Sigmoid` and `{name}/Mul`.
pub fn silu(g: &mut GraphBuilder, name: &str, x: &str) -> String {
    let s = g.op(&format!("{name}/Sigmoid"), "Sigmoid", &[x], &[]);
    g.op(&format!("{name}/Mul"), "Mul", &[x, &s], &[])
}

/// Renames the lm_head's output to the graph output `logits` (an Identity node, so the name
/// stays fixed whatever produced it: MatMul, MatMulNBits or the soft-capping).
pub fn logits_output(g: &mut GraphBuilder, logits: &str) {
    g.identity_output("/lm_head/Identity", logits, "logits");
}

/// The decoder contract's tensor names; `input_ids` or `inputs_embeds` names the graph's first input.
pub fn decoder_io(input_ids: Option<&str>, inputs_embeds: Option<&str>) -> DecoderIo {
    DecoderIo {
        input_ids: input_ids.map(str::to_string),
        inputs_embeds: inputs_embeds.map(str::to_string),
        attention_mask: "attention_mask".into(),
        past_key: PAST_KEY.into(),
        past_value: PAST_VALUE.into(),
        present_key: PRESENT_KEY.into(),
        present_value: PRESENT_VALUE.into(),
        logits: "logits".into(),
        token_type_ids: None,
        shared_kv_buffer: true,
    }
}

/// Declares `attention_mask` and the per-layer past inputs, then `logits` and the present outputs,
/// all in `dt` ([batch, kv_heads, past|total, head_dim]); call after the graph's first input.
pub fn declare_kv_io(
    g: &mut GraphBuilder,
    dt: DataType,
    layers: usize,
    kv_heads: usize,
    head_dim: usize,
    vocab: usize,
) {
    g.input(
        "attention_mask",
        DataType::Int64,
        &[BATCH.into(), TOTAL.into()],
    );
    for i in 0..layers {
        for t in [PAST_KEY, PAST_VALUE] {
            let dims: [Dim; 4] = [BATCH.into(), kv_heads.into(), PAST.into(), head_dim.into()];
            g.input(&DecoderIo::layer(t, i), dt, &dims);
        }
    }
    g.output("logits", dt, &[BATCH.into(), SEQ.into(), vocab.into()]);
    for i in 0..layers {
        for t in [PRESENT_KEY, PRESENT_VALUE] {
            let dims: [Dim; 4] = [BATCH.into(), kv_heads.into(), TOTAL.into(), head_dim.into()];
            g.output(&DecoderIo::layer(t, i), dt, &dims);
        }
    }
}

/// `(seqlens_k, total_sequence_length)` as GroupQueryAttention wants them (int32): the mask's
/// row sums minus one, and its width.
pub fn sequence_lengths(g: &mut GraphBuilder) -> (String, String) {
    let axes = g.const_i64("/model/constants/axes_1", &[1], &[1]);
    let one = g.const_i64("/model/constants/one", &[], &[1]);
    let sum = g.op(
        "/model/attn_mask/ReduceSum",
        "ReduceSum",
        &["attention_mask", &axes],
        &[("keepdims", Attr::Int(0))],
    );
    let sub = g.op("/model/attn_mask/Sub", "Sub", &[&sum, &one], &[]);
    let seqlens_k = g.op(
        "/model/attn_mask/seqlens_k",
        "Cast",
        &[&sub],
        &[("to", Attr::Int(DataType::Int32 as i64))],
    );
    let shape = g.op("/model/attn_mask/Shape", "Shape", &["attention_mask"], &[]);
    let tot = g.op(
        "/model/attn_mask/Gather",
        "Gather",
        &[&shape, &one],
        &[("axis", Attr::Int(0))],
    );
    let total_len = g.op(
        "/model/attn_mask/total_seq_len",
        "Cast",
        &[&tot],
        &[("to", Attr::Int(DataType::Int32 as i64))],
    );
    (seqlens_k, total_len)
}

/// SimplifiedLayerNormalization (RMSNorm) over the last axis, statistics in f32.
pub fn rms_norm(g: &mut GraphBuilder, name: &str, input: &str, gamma: &str, eps: f32) -> String {
    g.op(
        name,
        "SimplifiedLayerNormalization",
        &[input, gamma],
        &[
            ("axis", Attr::Int(-1)),
            ("epsilon", Attr::Float(eps)),
            ("stash_type", Attr::Int(1)),
        ],
    )
}

/// LayerNormalization over the last axis of `x` with `affine` = [scale] or [scale, bias],
/// statistics in f32 (`stash_type` 1) whatever the compute dtype.
pub fn layer_norm(g: &mut GraphBuilder, name: &str, x: &str, affine: &[&str], eps: f32) -> String {
    let inputs: Vec<&str> = std::iter::once(x).chain(affine.iter().copied()).collect();
    g.op(
        name,
        "LayerNormalization",
        &inputs,
        &[
            ("axis", Attr::Int(-1)),
            ("epsilon", Attr::Float(eps)),
            ("stash_type", Attr::Int(1)),
        ],
    )
}

/// A decoder layer's input RMSNorm `{p}.input_layernorm` (weight `ln`). Both decoder families
/// defer each layer's residual add into the next norm: layer 0 (`pending` None) normalises
/// `residual` itself; later layers fold `residual += pending` (the previous layer's output) into
/// SkipSimplifiedLayerNormalization and `residual` becomes that sum.
pub fn input_norm(
    g: &mut GraphBuilder,
    p: &str,
    residual: &mut String,
    pending: Option<String>,
    ln: &str,
    eps: f32,
) -> String {
    match pending {
        None => rms_norm(
            g,
            &format!("/{p}/input_layernorm/SimplifiedLayerNorm"),
            residual,
            ln,
            eps,
        ),
        Some(prev) => {
            let (out, sum) = skip_norm(
                g,
                &format!("/{p}/input_layernorm/SkipLayerNorm"),
                &prev,
                residual,
                ln,
                eps,
            );
            *residual = sum;
            out
        }
    }
}

/// The final RMSNorm `/model/norm` (weight `norm`) with the last layer's deferred residual add
/// (`pending`) fused in; its normalised output feeds the lm_head.
pub fn final_norm(
    g: &mut GraphBuilder,
    pending: Option<String>,
    residual: &str,
    norm: &str,
    eps: f32,
) -> Result<String, Error> {
    let last = pending.ok_or_else(|| Error::Unsupported("a decoder with zero layers".into()))?;
    Ok(skip_norm(g, "/model/norm/SkipLayerNorm", &last, residual, norm, eps).0)
}

/// SkipSimplifiedLayerNormalization: returns (normalised, input + skip).
pub fn skip_norm(
    g: &mut GraphBuilder,
    name: &str,
    input: &str,
    skip: &str,
    gamma: &str,
    eps: f32,
) -> (String, String) {
    let out = format!("{name}/output_0");
    let sum = format!("{name}/output_3");
    g.node_with(
        name,
        "SkipSimplifiedLayerNormalization",
        MS_DOMAIN,
        &[input, skip, gamma],
        &[out.clone(), String::new(), String::new(), sum.clone()],
        &[("epsilon", Attr::Float(eps))],
    );
    (out, sum)
}

/// `logits = hidden @ embed^T` reusing the embedding initializer (ORT folds the transpose once).
pub fn tied_head(g: &mut GraphBuilder, hidden: &str, embed: &str) -> String {
    let t = g.op(
        "/lm_head/Transpose",
        "Transpose",
        &[embed],
        &[("perm", Attr::Ints(vec![1, 0]))],
    );
    g.op("/lm_head/MatMul", "MatMul", &[hidden, &t], &[])
}
