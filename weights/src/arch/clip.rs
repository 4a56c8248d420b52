//! CLIP text encoder (`CLIPTextModel`, FLUX's `text_encoder/`, CLIP-L): the graph `clip.onnx`
//! computes the pooled output FluxPipeline feeds the transformer.
//!
//! ```text
//! input_ids [b, s≤max_position_embeddings] ─ Gather(token_embedding) + position_embedding[:s]
//! per layer: x += out_proj(attn(LN1(x), causal)); x += fc2(act(fc1(LN2(x))))
//! pooled:    x[i, p_i] with p_i from the ids (below) ─ final_layer_norm ─ pooled_output [b, hidden]
//! ```
//! The pooled position follows transformers: with the legacy `eos_token_id == 2` (FLUX.1-dev's
//! config) it is the first position of the largest id (CLIP's EOS, 49407, is the largest id);
//! otherwise the first position equal to `eos_token_id`. LayerNorm is per row, so normalising
//! only the pooled rows equals normalising everything and then picking.

use super::nn::{self, BuiltGraph, Net};
use super::Dtype;
use crate::checkpoint::safetensors::SafetensorsSource;
use crate::checkpoint::{read_json, TensorSource};
use crate::onnx::{Attr, DataType, Dim};
use crate::quant::Scheme;
use crate::Error;
use serde::Deserialize;
use std::path::Path;

pub const GRAPH: &str = "clip.onnx";
pub const INPUT_IDS: &str = "input_ids";
pub const POOLED_OUTPUT: &str = "pooled_output";

/// `text_encoder/config.json` (the fields the graph depends on).
#[derive(Debug, Clone, Deserialize)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_eos")]
    pub eos_token_id: i64,
}

fn default_act() -> String {
    "quick_gelu".into()
}
fn default_eps() -> f64 {
    1e-5
}
fn default_eos() -> i64 {
    2
}

impl ClipTextConfig {
    pub fn load(dir: &Path) -> Result<Self, Error> {
        let path = dir.join("config.json");
        let cfg: Self = read_json(&path)?;
        let bad = |msg: String| Error::Config {
            path: path.clone(),
            msg,
        };
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads)
        {
            return Err(bad(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                cfg.hidden_size, cfg.num_attention_heads
            )));
        }
        if !matches!(cfg.hidden_act.as_str(), "quick_gelu" | "gelu") {
            return Err(bad(format!(
                "hidden_act {:?} (supported: quick_gelu, gelu)",
                cfg.hidden_act
            )));
        }
        Ok(cfg)
    }
}

/// Builds `clip.onnx` (+ `.data`) in `out_dir` from a `CLIPTextModel` folder.
///
/// I/O: `input_ids` int64 `[batch, sequence]` (sequence ≤ max_position_embeddings; FluxPipeline
/// always sends 77, padded with EOS) → `pooled_output` `[batch, hidden_size]` in `dtype`.
pub fn build_dir(dir: &Path, out_dir: &Path, dtype: Dtype) -> Result<BuiltGraph, Error> {
    let cfg = ClipTextConfig::load(dir)?;
    let src = SafetensorsSource::open_component(dir)?;
    nn::write_graph(out_dir, GRAPH, dtype, |net| build(&cfg, &src, net))
}

/// Emits the CLIP text graph into `net`.
pub fn build(cfg: &ClipTextConfig, src: &dyn TensorSource, net: &mut Net) -> Result<(), Error> {
    let (h, f, heads) = (
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_attention_heads,
    );
    let d = h / heads;
    let eps = cfg.layer_norm_eps as f32;
    // transformers 5 saves CLIPTextModel without the `text_model.` prefix older files have.
    let prefix = if src.contains("text_model.embeddings.token_embedding.weight") {
        "text_model."
    } else {
        ""
    };
    let get = |name: &str, shape: &[usize]| src.get_shaped(&format!("{prefix}{name}"), shape);

    net.g.input(
        INPUT_IDS,
        DataType::Int64,
        &[Dim::from("batch"), "sequence".into()],
    );
    net.g
        .output(POOLED_OUTPUT, net.dt(), &[Dim::from("batch"), h.into()]);

    // Sequence length as a 1-D tensor, for slicing the position table and the mask.
    let s = net.op(
        "/clip/seq_len",
        "Shape",
        &[INPUT_IDS],
        &[("start", Attr::Int(1)), ("end", Attr::Int(2))],
    );
    let zero = net.g.const_i64("/clip/zero", &[1], &[0]);
    let zeros2 = net.g.const_i64("/clip/zeros2", &[2], &[0, 0]);
    let axis0 = net.g.const_i64("/clip/axis0", &[1], &[0]);
    let axes01 = net.g.const_i64("/clip/axes01", &[2], &[0, 1]);

    let tok = get("embeddings.token_embedding.weight", &[cfg.vocab_size, h])?;
    let tok = net.weight("embeddings.token_embedding.weight", &tok)?;
    let pos = get(
        "embeddings.position_embedding.weight",
        &[cfg.max_position_embeddings, h],
    )?;
    let pos = net.weight("embeddings.position_embedding.weight", &pos)?;
    let emb = net.op("/clip/embeddings/Gather", "Gather", &[&tok, INPUT_IDS], &[]);
    let pos = net.op(
        "/clip/embeddings/pos/Slice",
        "Slice",
        &[&pos, &zero, &s, &axis0],
        &[],
    );
    let mut x = net.op("/clip/embeddings/Add", "Add", &[&emb, &pos], &[]);

    // Causal mask: 0 on and below the diagonal, the dtype's lowest finite value above.
    let m = cfg.max_position_embeddings;
    let low = dtype_low(net.dtype);
    let mask: Vec<f32> = (0..m * m)
        .map(|i| if i % m > i / m { low } else { 0.0 })
        .collect();
    let mask = net.weight(
        "causal_mask",
        &crate::checkpoint::Tensor::new(vec![m, m], mask),
    )?;
    let ends = net.op(
        "/clip/mask/ends",
        "Concat",
        &[&s, &s],
        &[("axis", Attr::Int(0))],
    );
    let mask = net.op(
        "/clip/mask/Slice",
        "Slice",
        &[&mask, &zeros2, &ends, &axes01],
        &[],
    );

    for i in 0..cfg.num_hidden_layers {
        let p = format!("encoder.layers.{i}");
        let ln = |n: &str| -> Result<_, Error> {
            Ok((
                get(&format!("{p}.{n}.weight"), &[h])?,
                get(&format!("{p}.{n}.bias"), &[h])?,
            ))
        };
        let lin = |n: &str, out: usize, inp: usize| -> Result<_, Error> {
            Ok((
                get(&format!("{p}.{n}.weight"), &[out, inp])?,
                get(&format!("{p}.{n}.bias"), &[out])?,
            ))
        };
        let (g1, b1) = ln("layer_norm1")?;
        let y = net.layer_norm(&format!("{p}.layer_norm1"), &x, &g1, &b1, eps)?;
        let mut qkv = Vec::new();
        for n in ["q_proj", "k_proj", "v_proj"] {
            let (w, b) = lin(&format!("self_attn.{n}"), h, h)?;
            qkv.push(net.linear(
                &format!("{p}.self_attn.{n}"),
                &y,
                &w,
                Some(&b),
                Scheme::None,
            )?);
        }
        let a = net.attention(
            &format!("{p}/attn"),
            &qkv[0],
            &qkv[1],
            &qkv[2],
            heads,
            d,
            (d as f32).powf(-0.5),
            Some(&mask),
        );
        let (w, b) = lin("self_attn.out_proj", h, h)?;
        let o = net.linear(
            &format!("{p}.self_attn.out_proj"),
            &a,
            &w,
            Some(&b),
            Scheme::None,
        )?;
        x = net.op(&format!("/{p}/attn/Residual"), "Add", &[&x, &o], &[]);

        let (g2, b2) = ln("layer_norm2")?;
        let y = net.layer_norm(&format!("{p}.layer_norm2"), &x, &g2, &b2, eps)?;
        let (w, b) = lin("mlp.fc1", f, h)?;
        let y = net.linear(&format!("{p}.mlp.fc1"), &y, &w, Some(&b), Scheme::None)?;
        let y = activation(net, &format!("/{p}/mlp/act"), &y, &cfg.hidden_act);
        let (w, b) = lin("mlp.fc2", h, f)?;
        let y = net.linear(&format!("{p}.mlp.fc2"), &y, &w, Some(&b), Scheme::None)?;
        x = net.op(&format!("/{p}/mlp/Residual"), "Add", &[&x, &y], &[]);
    }

    // Pooled position per row, as int64 [b, 1] for GatherND with one batch dim.
    let ids32 = net.op(
        "/clip/pool/Cast",
        "Cast",
        &[INPUT_IDS],
        &[("to", Attr::Int(DataType::Int32 as i64))],
    );
    let keyed = if cfg.eos_token_id == 2 {
        ids32
    } else {
        let eos = net.g.const_raw(
            "/clip/pool/eos",
            DataType::Int32,
            &[],
            (cfg.eos_token_id as i32).to_le_bytes().to_vec(),
        );
        let eq = net.op("/clip/pool/Equal", "Equal", &[&ids32, &eos], &[]);
        net.op(
            "/clip/pool/EqualInt",
            "Cast",
            &[&eq],
            &[("to", Attr::Int(DataType::Int32 as i64))],
        )
    };
    let at = net.op(
        "/clip/pool/ArgMax",
        "ArgMax",
        &[&keyed],
        &[("axis", Attr::Int(1)), ("keepdims", Attr::Int(1))],
    );
    let rows = net.op(
        "/clip/pool/GatherND",
        "GatherND",
        &[&x, &at],
        &[("batch_dims", Attr::Int(1))],
    );
    let gf = get("final_layer_norm.weight", &[h])?;
    let bf = get("final_layer_norm.bias", &[h])?;
    let pooled = net.layer_norm("final_layer_norm", &rows, &gf, &bf, eps)?;
    net.g
        .identity_output("/clip/pooled_output", &pooled, POOLED_OUTPUT);
    Ok(())
}

/// quick_gelu: x·σ(1.702x); gelu: the exact (erf) form.
fn activation(net: &mut Net, name: &str, x: &str, act: &str) -> String {
    match act {
        "gelu" => net.ms_op(&format!("{name}/Gelu"), "Gelu", &[x], &[]),
        _ => {
            let k = net.scalar(&format!("{name}/alpha"), 1.702);
            let kx = net.op(&format!("{name}/Scale"), "Mul", &[x, &k], &[]);
            let s = net.op(&format!("{name}/Sigmoid"), "Sigmoid", &[&kx], &[]);
            net.op(&format!("{name}/Mul"), "Mul", &[x, &s], &[])
        }
    }
}

/// The most negative finite value of the compute dtype (what transformers masks with).
pub(crate) fn dtype_low(dtype: Dtype) -> f32 {
    match dtype {
        Dtype::Fp32 => f32::MIN,
        Dtype::Fp16 => half::f16::MIN.to_f32(),
        Dtype::Bf16 => half::bf16::MIN.to_f32(),
    }
}
