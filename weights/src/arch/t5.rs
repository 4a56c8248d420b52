//! T5 encoder (`T5EncoderModel`, FLUX's `text_encoder_2/`, T5-XXL v1.1): the graph `t5.onnx`
//! computes the prompt sequence FluxPipeline feeds the transformer.
//!
//! ```text
//! input_ids [b, s] ─ Gather(shared) ─ x
//! bias [1, heads, s, s] = relative_attention_bias[bucket(j − i)]   (layer 0's table, all layers)
//! per layer: x += o(attn(RMS(x), + bias, no scaling)); x += wo(act(wi_0(RMS(x))) · wi_1(RMS(x)))
//! RMS(final_layer_norm) ─ last_hidden_state [b, s, d_model]
//! ```
//! The bucket of a relative position depends only on j − i, and every |j − i| ≥ max_distance
//! falls in the last bucket, so the buckets are a table over j − i ∈ [−max_distance,
//! max_distance] computed here at compile time (exact integers; the float formula of transformers
//! evaluated where it is not an exact boundary), and the graph clamps j − i into it. The sequence
//! length therefore stays dynamic (FluxPipeline always sends 512, padded with `<pad>`). No
//! attention mask: FluxPipeline passes none, so padding is attended to, as in diffusers.
//!
//! q/k/v are fused into one matrix, as are the gated FFN's wi_0/wi_1, so a layer has four
//! matmuls; each can be weight-only quantised (MatMulNBits). bf16 is the dtype to run: T5's
//! activations overflow fp16 (transformers clamps them in fp16; this graph does not).

use super::nn::{self, get_any, BuiltGraph, Net};
use super::Dtype;
use crate::checkpoint::safetensors::SafetensorsSource;
use crate::checkpoint::{read_json, Tensor, TensorSource};
use crate::onnx::{Attr, DataType, Dim};
use crate::quant::Scheme;
use crate::Error;
use serde::Deserialize;
use std::path::Path;

pub const GRAPH: &str = "t5.onnx";
pub const INPUT_IDS: &str = "input_ids";
pub const LAST_HIDDEN_STATE: &str = "last_hidden_state";

/// `text_encoder_2/config.json` (the fields the encoder depends on).
#[derive(Debug, Clone, Deserialize)]
pub struct T5Config {
    pub vocab_size: usize,
    pub d_model: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub relative_attention_num_buckets: usize,
    #[serde(default = "default_max_distance")]
    pub relative_attention_max_distance: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    /// `gated-gelu` (v1.1), `relu` (original T5), `gated-relu`, ...
    #[serde(default = "default_ffp")]
    pub feed_forward_proj: String,
    /// Activation of the FFN; defaults from `feed_forward_proj` as transformers derives it.
    #[serde(default)]
    pub dense_act_fn: Option<String>,
}

fn default_max_distance() -> usize {
    128
}
fn default_eps() -> f64 {
    1e-6
}
fn default_ffp() -> String {
    "relu".into()
}

impl T5Config {
    pub fn load(dir: &Path) -> Result<Self, Error> {
        let path = dir.join("config.json");
        let cfg: Self = read_json(&path)?;
        let bad = |msg: String| Error::Config {
            path: path.clone(),
            msg,
        };
        let act = cfg.act();
        if !matches!(act.as_str(), "gelu_new" | "gelu_pytorch_tanh" | "relu") {
            return Err(bad(format!(
                "FFN activation {act:?} (supported: gelu_new, gelu_pytorch_tanh, relu)"
            )));
        }
        if cfg.relative_attention_num_buckets < 4 || cfg.relative_attention_max_distance == 0 {
            return Err(bad(format!(
                "relative_attention_num_buckets {} / max_distance {}",
                cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance
            )));
        }
        Ok(cfg)
    }

    pub fn gated(&self) -> bool {
        self.feed_forward_proj.starts_with("gated-")
    }

    /// transformers: `dense_act_fn` = the part after `gated-`, with `gelu` meaning `gelu_new`.
    pub fn act(&self) -> String {
        let derived = match self.feed_forward_proj.trim_start_matches("gated-") {
            "gelu" => "gelu_new",
            other => other,
        };
        self.dense_act_fn
            .clone()
            .unwrap_or_else(|| derived.to_string())
    }
}

/// Bucket of relative position `rp` = memory − query for a bidirectional (encoder) T5, as
/// transformers' `_relative_position_bucket`: half the buckets per direction, of which the
/// first half are exact distances and the rest logarithmic up to `max_distance`.
pub fn relative_bucket(rp: i64, num_buckets: usize, max_distance: usize) -> i64 {
    let nb = (num_buckets / 2) as i64;
    let base = if rp > 0 { nb } else { 0 };
    let n = rp.abs();
    let max_exact = nb / 2;
    if n < max_exact {
        return base + n;
    }
    let x = (n as f64 / max_exact as f64).ln() / (max_distance as f64 / max_exact as f64).ln()
        * (nb - max_exact) as f64;
    // An exact boundary (n = max_exact · (max_distance/max_exact)^(k/(nb−max_exact))) may land a
    // hair below its integer in floating point; transformers' float32 result lands on it.
    let large = max_exact + (x + 1e-9).floor() as i64;
    base + large.min(nb - 1)
}

/// Builds `t5.onnx` (+ `.data`) in `out_dir` from a `T5EncoderModel` folder; `linear` picks
/// weight-only quantisation of the attention and FFN matrices (embeddings and norms stay in
/// `dtype`).
///
/// I/O: `input_ids` int64 `[batch, sequence]` → `last_hidden_state` `[batch, sequence, d_model]`
/// in `dtype`.
pub fn build_dir(
    dir: &Path,
    out_dir: &Path,
    dtype: Dtype,
    linear: Scheme,
) -> Result<BuiltGraph, Error> {
    let cfg = T5Config::load(dir)?;
    let src = SafetensorsSource::open_component(dir)?;
    nn::write_graph(out_dir, GRAPH, dtype, |net| build(&cfg, &src, net, linear))
}

/// Emits the T5 encoder graph into `net`.
pub fn build(
    cfg: &T5Config,
    src: &dyn TensorSource,
    net: &mut Net,
    linear: Scheme,
) -> Result<(), Error> {
    let (dm, heads, dkv, dff) = (cfg.d_model, cfg.num_heads, cfg.d_kv, cfg.d_ff);
    let inner = heads * dkv;
    let eps = cfg.layer_norm_epsilon as f32;
    let md = cfg.relative_attention_max_distance;

    net.g.input(
        INPUT_IDS,
        DataType::Int64,
        &[Dim::from("batch"), "sequence".into()],
    );
    let out_dims = [Dim::from("batch"), "sequence".into(), dm.into()];
    net.g.output(LAST_HIDDEN_STATE, net.dt(), &out_dims);

    // The embedding is `shared.weight` (tied) or `encoder.embed_tokens.weight`, depending on
    // who saved the checkpoint.
    let emb = get_any(
        src,
        &["encoder.embed_tokens.weight".into(), "shared.weight".into()],
        &[cfg.vocab_size, dm],
    )?;
    let emb = net.weight("encoder.embed_tokens.weight", &emb)?;
    let mut x = net.op("/t5/embed/Gather", "Gather", &[&emb, INPUT_IDS], &[]);

    // Position bias [1, heads, s, s] from the clamped relative positions.
    let table: Vec<i64> = (-(md as i64)..=md as i64)
        .map(|rp| relative_bucket(rp, cfg.relative_attention_num_buckets, md))
        .collect();
    let table = net
        .g
        .const_i64("/t5/bias/bucket_table", &[table.len()], &table);
    let s = net.op(
        "/t5/bias/seq_len",
        "Shape",
        &[INPUT_IDS],
        &[("start", Attr::Int(1)), ("end", Attr::Int(2))],
    );
    let s0 = net.op("/t5/bias/seq_len_scalar", "Squeeze", &[&s], &[]);
    let zero = net.g.const_i64("/t5/bias/zero", &[], &[0]);
    let one = net.g.const_i64("/t5/bias/one", &[], &[1]);
    let pos = net.op("/t5/bias/Range", "Range", &[&zero, &s0, &one], &[]);
    let ax0 = net.g.const_i64("/t5/bias/axis0", &[1], &[0]);
    let ax1 = net.g.const_i64("/t5/bias/axis1", &[1], &[1]);
    let mem = net.op("/t5/bias/memory", "Unsqueeze", &[&pos, &ax0], &[]);
    let ctx = net.op("/t5/bias/context", "Unsqueeze", &[&pos, &ax1], &[]);
    let rel = net.op("/t5/bias/relative", "Sub", &[&mem, &ctx], &[]);
    let lo = net.g.const_i64("/t5/bias/lo", &[], &[-(md as i64)]);
    let hi = net.g.const_i64("/t5/bias/hi", &[], &[md as i64]);
    let rel = net.op("/t5/bias/Max", "Max", &[&rel, &lo], &[]);
    let rel = net.op("/t5/bias/Min", "Min", &[&rel, &hi], &[]);
    let idx = net.op("/t5/bias/index", "Add", &[&rel, &hi], &[]);
    let buckets = net.op("/t5/bias/buckets", "Gather", &[&table, &idx], &[]);
    let rab = src.get_shaped(
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        &[cfg.relative_attention_num_buckets, heads],
    )?;
    let rab = net.weight(
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        &rab,
    )?;
    let vals = net.op("/t5/bias/Gather", "Gather", &[&rab, &buckets], &[]);
    let bias = net.op(
        "/t5/bias/Transpose",
        "Transpose",
        &[&vals],
        &[("perm", Attr::Ints(vec![2, 0, 1]))],
    );
    let bias = net.op("/t5/bias/Unsqueeze", "Unsqueeze", &[&bias, &ax0], &[]);

    let act = cfg.act();
    for i in 0..cfg.num_layers {
        let p = format!("encoder.block.{i}.layer");
        let get = |n: &str, shape: &[usize]| src.get_shaped(&format!("{p}.{n}"), shape);

        // Self-attention.
        let ln = get("0.layer_norm.weight", &[dm])?;
        let y = net.rms_norm(&format!("{p}.0.layer_norm"), &x, &ln, eps)?;
        let qkv = Tensor::concat_rows(&[
            get("0.SelfAttention.q.weight", &[inner, dm])?,
            get("0.SelfAttention.k.weight", &[inner, dm])?,
            get("0.SelfAttention.v.weight", &[inner, dm])?,
        ]);
        let qkv = net.linear(&format!("{p}.0.SelfAttention.qkv"), &y, &qkv, None, linear)?;
        let parts = net.g.node(
            &format!("/{p}.0/attn/Split"),
            "Split",
            "",
            &[&qkv],
            3,
            &[("axis", Attr::Int(-1)), ("num_outputs", Attr::Int(3))],
        );
        let a = net.attention(
            &format!("{p}.0/attn"),
            &parts[0],
            &parts[1],
            &parts[2],
            heads,
            dkv,
            1.0,
            Some(&bias),
        );
        let o = get("0.SelfAttention.o.weight", &[dm, inner])?;
        let o = net.linear(&format!("{p}.0.SelfAttention.o"), &a, &o, None, linear)?;
        x = net.op(&format!("/{p}.0/Residual"), "Add", &[&x, &o], &[]);

        // Feed-forward.
        let ln = get("1.layer_norm.weight", &[dm])?;
        let y = net.rms_norm(&format!("{p}.1.layer_norm"), &x, &ln, eps)?;
        let ff = format!("{p}.1.DenseReluDense");
        let h = if cfg.gated() {
            let wi = Tensor::concat_rows(&[
                get("1.DenseReluDense.wi_0.weight", &[dff, dm])?,
                get("1.DenseReluDense.wi_1.weight", &[dff, dm])?,
            ]);
            let gu = net.linear(&format!("{ff}.wi"), &y, &wi, None, linear)?;
            let parts = net.g.node(
                &format!("/{ff}/Split"),
                "Split",
                "",
                &[&gu],
                2,
                &[("axis", Attr::Int(-1)), ("num_outputs", Attr::Int(2))],
            );
            let g = activation(net, &format!("/{ff}/act"), &parts[0], &act);
            net.op(&format!("/{ff}/Gate"), "Mul", &[&g, &parts[1]], &[])
        } else {
            let wi = get("1.DenseReluDense.wi.weight", &[dff, dm])?;
            let h = net.linear(&format!("{ff}.wi"), &y, &wi, None, linear)?;
            activation(net, &format!("/{ff}/act"), &h, &act)
        };
        let wo = get("1.DenseReluDense.wo.weight", &[dm, dff])?;
        let o = net.linear(&format!("{ff}.wo"), &h, &wo, None, linear)?;
        x = net.op(&format!("/{p}.1/Residual"), "Add", &[&x, &o], &[]);
    }

    let ln = src.get_shaped("encoder.final_layer_norm.weight", &[dm])?;
    let y = net.rms_norm("encoder.final_layer_norm", &x, &ln, eps)?;
    net.g
        .identity_output("/t5/last_hidden_state", &y, LAST_HIDDEN_STATE);
    Ok(())
}

/// gelu_new / gelu_pytorch_tanh (the tanh approximation: com.microsoft FastGelu), or relu.
fn activation(net: &mut Net, name: &str, x: &str, act: &str) -> String {
    match act {
        "relu" => net.op(&format!("{name}/Relu"), "Relu", &[x], &[]),
        _ => net.ms_op(&format!("{name}/FastGelu"), "FastGelu", &[x], &[]),
    }
}

#[cfg(test)]
mod tests {
    use super::relative_bucket;

    /// transformers' buckets for T5 v1.1 (32 buckets, max_distance 128) at the boundaries.
    #[test]
    fn buckets_match_transformers() {
        let want = [
            (15, 25),
            (16, 26),
            (17, 26),
            (22, 26),
            (23, 27),
            (31, 27),
            (32, 28),
            (33, 28),
            (45, 28),
            (46, 29),
            (63, 29),
            (64, 30),
            (65, 30),
            (90, 30),
            (91, 31),
            (127, 31),
            (128, 31),
            (129, 31),
            (0, 0),
            (-1, 1),
            (-7, 7),
            (-8, 8),
            (-16, 10),
            (-600, 15),
        ];
        for (rp, b) in want {
            assert_eq!(relative_bucket(rp, 32, 128), b, "relative position {rp}");
        }
    }
}
