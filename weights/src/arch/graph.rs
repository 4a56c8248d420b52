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
        self.g.weight(
            name,
            self.dtype.onnx(),
            &t.shape,
            &self.dtype.encode(&t.data),
        )
    }

    /// `x @ W^T` for `W[N, K]`, either as MatMul on the transposed weight or as MatMulNBits.
    pub fn linear(
        &mut self,
        name: &str,
        x: &str,
        w: &Tensor,
        scheme: Scheme,
    ) -> Result<String, Error> {
        match quant::quantize(w, scheme) {
            None => {
                let wt = self.weight(&format!("{name}.weight"), &w.transpose2())?;
                Ok(self
                    .g
                    .op(&format!("/{name}/MatMul"), "MatMul", &[x, &wt], &[]))
            }
            Some(q) => {
                self.reports.push(quant::report(name, scheme, w, &q));
                quant::emit::matmul_nbits(self.g, name, x, &q, self.dtype)
            }
        }
    }
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
