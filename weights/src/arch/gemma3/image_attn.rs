//! Bidirectional attention among the tokens of one image, as Gemma3ForConditionalGeneration runs
//! a prompt whose `token_type_ids` mark image tokens (transformers' `create_masks_for_vision_model`):
//! a query in an image block may also attend to the later tokens of that block; every other query
//! is causal. Global layers: `valid ∧ (causal ∨ same block)`; sliding layers additionally
//! `key > query − window`.
//!
//! GroupQueryAttention is causal only, so it still runs for every token (and keeps writing the KV
//! cache, shared buffer included); image-token queries then take their output from an explicit
//! attention over the cache it wrote (`present`, sliced to the mask's width) with the mask above.
//! All of it sits in the `then` branch of an `If` on "this call has an image token", so text-only
//! prefill and every decode step pay one tiny reduction per call and nothing per layer.
//! Blocks are found within the current chunk (an image's tokens must arrive in one call); keys
//! from earlier calls are causal for every query anyway. Query positions follow GQA's rule:
//! `max(seqlens_k + 1 − seq, 0) + i`.

use super::{Gemma3Spec, LayerType};
use crate::arch::graph::Ctx;
use crate::onnx::{Attr, DataType, GraphBuilder, MS_DOMAIN};

/// What the layers' image attention shares: the `If` condition and GQA's sequence lengths.
pub struct Gate {
    /// bool scalar: some token of this call is an image token.
    pub cond: String,
    pub seqlens_k: String,
}

/// The tensors of one layer's explicit attention.
struct Masks {
    /// int64 [batch, seq]: positions of the chunk's tokens (RotaryEmbedding's position_ids).
    positions: String,
    /// bool [batch, seq, 1]: queries that are image tokens.
    is_image: String,
    /// f32 additive mask [batch, 1, groups·seq, total] (tiled over the query heads of a KV head).
    mask: String,
    /// int64 [1]: the mask's width (total sequence length).
    total: String,
}

const TOKEN_TYPE_IDS: &str = "token_type_ids";
pub const INPUT: &str = TOKEN_TYPE_IDS;

/// Declares `token_type_ids` and computes the gate.
pub fn gate(g: &mut GraphBuilder, seqlens_k: &str) -> Gate {
    g.input(
        TOKEN_TYPE_IDS,
        DataType::Int64,
        &["batch_size".into(), "sequence_length".into()],
    );
    let zero = g.const_i64("/model/image_attn/gate_zero", &[], &[0]);
    let max = g.op(
        "/model/image_attn/ReduceMax",
        "ReduceMax",
        &[TOKEN_TYPE_IDS],
        &[("keepdims", Attr::Int(0))],
    );
    let cond = g.op(
        "/model/image_attn/has_image",
        "Greater",
        &[&max, &zero],
        &[],
    );
    Gate {
        cond,
        seqlens_k: seqlens_k.to_string(),
    }
}

/// The layer's mask and positions from `token_type_ids`, the attention mask and `seqlens_k`
/// (inside the layer's `then` branch; names under `prefix`).
fn masks(
    g: &mut GraphBuilder,
    spec: &Gemma3Spec,
    seqlens_k: &str,
    layer_type: LayerType,
    prefix: &str,
) -> Masks {
    let n = |x: &str| format!("{prefix}/{x}");
    let c = |g: &mut GraphBuilder, name: &str, v: i64| g.const_i64(&n(name), &[], &[v]);
    let (zero, one, minus_one) = (c(g, "zero", 0), c(g, "one", 1), c(g, "minus_one", -1));
    let idx1 = g.const_i64(&n("idx1"), &[1], &[1]);
    let zero1 = g.const_i64(&n("zero_1d"), &[1], &[0]);
    let axis1 = g.const_i64(&n("axis1"), &[1], &[1]);
    let axis2 = g.const_i64(&n("axis2"), &[1], &[2]);
    let int64 = [("to", Attr::Int(DataType::Int64 as i64))];

    // s (scalar) and T ([1]).
    let es = g.op(&n("embeds_shape"), "Shape", &["inputs_embeds"], &[]);
    let s1 = g.op(
        &n("seq_1d"),
        "Gather",
        &[&es, &idx1],
        &[("axis", Attr::Int(0))],
    );
    let s = g.op(&n("seq"), "Squeeze", &[&s1], &[]);
    let ms = g.op(&n("mask_shape"), "Shape", &["attention_mask"], &[]);
    let total = g.op(
        &n("total_1d"),
        "Gather",
        &[&ms, &idx1],
        &[("axis", Attr::Int(0))],
    );
    let t = g.op(&n("total"), "Squeeze", &[&total], &[]);

    // positions[b, i] = max(seqlens_k[b] + 1 - s, 0) + i
    let sk = g.op(&n("seqlens_i64"), "Cast", &[seqlens_k], &int64);
    let sk1 = g.op(&n("seqlens_plus_1"), "Add", &[&sk, &one], &[]);
    let st = g.op(&n("start_raw"), "Sub", &[&sk1, &s], &[]);
    let start = g.op(&n("start"), "Max", &[&st, &zero], &[]);
    let start_col = g.op(&n("start_col"), "Unsqueeze", &[&start, &axis1], &[]);
    let ar_s = g.op(&n("range_s"), "Range", &[&zero, &s, &one], &[]);
    let positions = g.op(&n("positions"), "Add", &[&start_col, &ar_s], &[]);

    // Block ids of the chunk's tokens, as get_block_sequence_ids_for_mask: a block starts at an
    // image token whose predecessor is not one; -1 for text.
    let img = g.op(&n("is_image"), "Equal", &[TOKEN_TYPE_IDS, &one], &[]);
    let img_i = g.op(&n("is_image_i64"), "Cast", &[&img], &int64);
    let first = g.op(
        &n("first_col"),
        "Slice",
        &[&img_i, &zero1, &idx1, &axis1],
        &[],
    );
    let zcol = g.op(&n("zero_col"), "Mul", &[&first, &zero], &[]);
    let shifted = g.op(
        &n("shifted"),
        "Concat",
        &[&zcol, &img_i],
        &[("axis", Attr::Int(1))],
    );
    let prev = g.op(
        &n("prev_is_image"),
        "Slice",
        &[&shifted, &zero1, &s1, &axis1],
        &[],
    );
    let not_prev = g.op(&n("not_prev"), "Sub", &[&one, &prev], &[]);
    let new_start = g.op(&n("new_start"), "Mul", &[&img_i, &not_prev], &[]);
    let cum = g.op(&n("cumsum"), "CumSum", &[&new_start, &one], &[]);
    let grp = g.op(&n("group"), "Sub", &[&cum, &one], &[]);
    let block_q = g.op(&n("block_q"), "Where", &[&img, &grp, &minus_one], &[]);

    // Block id of each key [b, T]: the chunk's ids where the key is in the chunk, else -1.
    let ar_t = g.op(&n("range_t"), "Range", &[&zero, &t, &one], &[]);
    let rel = g.op(&n("key_rel"), "Sub", &[&ar_t, &start_col], &[]);
    let s_minus_1 = g.op(&n("seq_minus_1"), "Sub", &[&s, &one], &[]);
    let lo = g.op(&n("key_rel_lo"), "Max", &[&rel, &zero], &[]);
    let clamped = g.op(&n("key_rel_clamped"), "Min", &[&lo, &s_minus_1], &[]);
    let gathered = g.op(
        &n("key_block_gather"),
        "GatherElements",
        &[&block_q, &clamped],
        &[("axis", Attr::Int(1))],
    );
    let in_lo = g.op(&n("key_in_lo"), "GreaterOrEqual", &[&rel, &zero], &[]);
    let in_hi = g.op(&n("key_in_hi"), "Less", &[&rel, &s], &[]);
    let in_chunk = g.op(&n("key_in_chunk"), "And", &[&in_lo, &in_hi], &[]);
    let block_k = g.op(
        &n("block_k"),
        "Where",
        &[&in_chunk, &gathered, &minus_one],
        &[],
    );

    // [b, s, T] conditions.
    let bq = g.op(&n("block_q_col"), "Unsqueeze", &[&block_q, &axis2], &[]);
    let bk = g.op(&n("block_k_row"), "Unsqueeze", &[&block_k, &axis1], &[]);
    let same = g.op(&n("same_block"), "Equal", &[&bq, &bk], &[]);
    let bq_img = g.op(&n("query_in_block"), "GreaterOrEqual", &[&bq, &zero], &[]);
    let same = g.op(&n("same_image"), "And", &[&same, &bq_img], &[]);
    let pos_col = g.op(&n("pos_col"), "Unsqueeze", &[&positions, &axis2], &[]);
    let causal = g.op(&n("causal"), "LessOrEqual", &[&ar_t, &pos_col], &[]);
    let allowed = g.op(&n("causal_or_block"), "Or", &[&causal, &same], &[]);
    let valid = g.op(&n("key_valid"), "Equal", &["attention_mask", &one], &[]);
    let valid = g.op(&n("key_valid_row"), "Unsqueeze", &[&valid, &axis1], &[]);
    let mut allowed = g.op(&n("full_allowed"), "And", &[&allowed, &valid], &[]);
    if layer_type == LayerType::Sliding {
        let w = c(g, "window", spec.sliding_window as i64);
        let lowest = g.op(&n("window_start"), "Sub", &[&pos_col, &w], &[]);
        let in_window = g.op(&n("in_window"), "Greater", &[&ar_t, &lowest], &[]);
        allowed = g.op(&n("sliding_allowed"), "And", &[&allowed, &in_window], &[]);
    }

    let groups = (spec.heads / spec.kv_heads) as i64;
    let tile = g.const_i64(&n("tile"), &[4], &[1, 1, groups, 1]);
    let zero_f = g.const_f32(&n("zero_f"), &[], &[0.0]);
    let min_f = g.const_f32(&n("min_f"), &[], &[f32::MIN]);
    let m = g.op(&n("mask/Where"), "Where", &[&allowed, &zero_f, &min_f], &[]);
    let m = g.op(&n("mask/Unsqueeze"), "Unsqueeze", &[&m, &axis1], &[]);
    let mask = g.op(&n("mask/Tile"), "Tile", &[&m, &tile], &[]);
    let is_image = g.op(&n("is_image_col"), "Unsqueeze", &[&img, &axis2], &[]);
    Masks {
        positions,
        is_image,
        mask,
        total,
    }
}

/// The layer's attention output with image-token queries recomputed bidirectionally:
/// `If(gate, then: explicit attention merged by Where, else: GQA's output)`.
#[allow(clippy::too_many_arguments)]
pub fn merge(
    cx: &mut Ctx,
    spec: &Gemma3Spec,
    p: &str,
    layer_type: LayerType,
    gate: &Gate,
    q: &str,
    rot: &(String, String),
    present: (&str, &str),
    gqa_out: &str,
) -> String {
    let dt = cx.dtype.onnx();
    let then_branch = cx.g.subgraph(&format!("{p}.image_attn.then"), |g| {
        let m = masks(
            g,
            spec,
            &gate.seqlens_k,
            layer_type,
            &format!("/{p}/image_attn/mask"),
        );
        let out = explicit(g, spec, dt, p, &m, q, rot, present, gqa_out);
        vec![(out, dt)]
    });
    let else_branch = cx.g.subgraph(&format!("{p}.image_attn.else"), |g| {
        let out = g.op(&format!("/{p}/image_attn/gqa"), "Identity", &[gqa_out], &[]);
        vec![(out, dt)]
    });
    cx.g.op(
        &format!("/{p}/image_attn/If"),
        "If",
        &[&gate.cond],
        &[
            ("then_branch", Attr::Graph(then_branch)),
            ("else_branch", Attr::Graph(else_branch)),
        ],
    )
}

/// Explicit attention of every query over `present[.., :total, ..]` with the layer's mask; image
/// queries take it, the others keep GQA's output.
#[allow(clippy::too_many_arguments)]
fn explicit(
    g: &mut GraphBuilder,
    spec: &Gemma3Spec,
    dt: DataType,
    p: &str,
    masks: &Masks,
    q: &str,
    (cos, sin): &(String, String),
    present: (&str, &str),
    gqa_out: &str,
) -> String {
    let n = |x: &str| format!("/{p}/image_attn/{x}");
    let (h, kv, d) = (
        spec.heads as i64,
        spec.kv_heads as i64,
        spec.head_dim as i64,
    );
    let groups = h / kv;
    let q_rot = g
        .node(
            &n("RotaryEmbedding"),
            "RotaryEmbedding",
            MS_DOMAIN,
            &[q, &masks.positions, cos, sin],
            1,
            &[("interleaved", Attr::Int(0)), ("num_heads", Attr::Int(h))],
        )
        .remove(0);
    // [b, s, H·d] → [b, KV, G·s, d] (head h = kv·G + g, as repeat_kv pairs them).
    let s5 = g.const_i64(&n("q_shape5"), &[5], &[0, 0, kv, groups, d]);
    let q5 = g.op(&n("q_reshape"), "Reshape", &[&q_rot, &s5], &[]);
    let qt = g.op(
        &n("q_transpose"),
        "Transpose",
        &[&q5],
        &[("perm", Attr::Ints(vec![0, 2, 3, 1, 4]))],
    );
    let s4 = g.const_i64(&n("q_shape4"), &[4], &[0, kv, -1, d]);
    let q4 = g.op(&n("q_flat"), "Reshape", &[&qt, &s4], &[]);
    // Keys and values from GQA's cache, up to the mask's width (the shared buffer is longer).
    let zero = g.const_i64(&n("zero"), &[1], &[0]);
    let axis = g.const_i64(&n("axis"), &[1], &[2]);
    let k = g.op(
        &n("k_slice"),
        "Slice",
        &[present.0, &zero, &masks.total, &axis],
        &[],
    );
    let v = g.op(
        &n("v_slice"),
        "Slice",
        &[present.1, &zero, &masks.total, &axis],
        &[],
    );
    let kt = g.op(
        &n("k_transpose"),
        "Transpose",
        &[&k],
        &[("perm", Attr::Ints(vec![0, 1, 3, 2]))],
    );
    let scores = g.op(&n("scores"), "MatMul", &[&q4, &kt], &[]);
    let half = dt != DataType::Float;
    let scale = (spec.query_pre_attn_scalar.powf(-0.5)) as f32;
    let scores = if half {
        g.op(
            &n("scores_f32"),
            "Cast",
            &[&scores],
            &[("to", Attr::Int(DataType::Float as i64))],
        )
    } else {
        scores
    };
    let sc = g.const_f32(&n("scale"), &[], &[scale]);
    let scaled = g.op(&n("scaled"), "Mul", &[&scores, &sc], &[]);
    let masked = g.op(&n("masked"), "Add", &[&scaled, &masks.mask], &[]);
    let probs = g.op(
        &n("softmax"),
        "Softmax",
        &[&masked],
        &[("axis", Attr::Int(-1))],
    );
    let probs = if half {
        g.op(
            &n("probs_cast"),
            "Cast",
            &[&probs],
            &[("to", Attr::Int(dt as i64))],
        )
    } else {
        probs
    };
    let o = g.op(&n("context"), "MatMul", &[&probs, &v], &[]);
    let o5s = g.const_i64(&n("o_shape5"), &[5], &[0, 0, groups, -1, d]);
    let o5 = g.op(&n("o_reshape"), "Reshape", &[&o, &o5s], &[]);
    let ot = g.op(
        &n("o_transpose"),
        "Transpose",
        &[&o5],
        &[("perm", Attr::Ints(vec![0, 3, 1, 2, 4]))],
    );
    let o3s = g.const_i64(&n("o_shape3"), &[3], &[0, 0, h * d]);
    let explicit = g.op(&n("o_flat"), "Reshape", &[&ot, &o3s], &[]);
    g.op(
        &n("Where"),
        "Where",
        &[&masks.is_image, &explicit, gqa_out],
        &[],
    )
}
