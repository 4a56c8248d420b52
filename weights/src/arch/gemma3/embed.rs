//! `embed.onnx`: token ids and image features in, the decoder's `inputs_embeds` out.
//!
//! ```text
//! input_ids ─ Where(== image_token, 0) ─ Gather(embed_tokens) ─ ·√hidden ─ ScatterND ─ inputs_embeds
//!                                                      image_features ─┘ (at NonZero(== image_token))
//! ```
//! As transformers' Gemma3Model: image-token ids are replaced by 0 before the lookup (it does so
//! only when the id is outside the vocabulary; the rows are overwritten either way, so doing it
//! always changes nothing and keeps any id in range), the scale is √hidden cast to the weight
//! dtype (Gemma3TextScaledWordEmbedding), and `masked_scatter` fills the image-token rows with the
//! feature rows in order. ScatterND needs exactly one feature row per image token, so a mismatch
//! fails the run instead of silently misplacing rows. In half precision the product is taken in
//! f32 and rounded once, which is what a bf16·bf16 (or f16·f16) multiply gives.

use super::Gemma3Spec;
use crate::arch::Dtype;
use crate::checkpoint::Tensor;
use crate::format::EmbedGraph;
use crate::onnx::{Attr, DataType, ExternalRef, GraphBuilder};
use crate::Error;
use half::{bf16, f16};

/// Where the embedding table comes from.
pub enum Table<'a> {
    /// Already written by the decoder (its tied head): point at those bytes.
    Shared(&'a ExternalRef),
    /// Write it into this graph's own data file.
    Own(&'a Tensor),
}

/// √hidden as transformers applies it: an f32 scalar cast to the weight dtype.
pub fn embed_scale(hidden: usize, dtype: Dtype) -> f32 {
    let s = (hidden as f64).sqrt() as f32;
    match dtype {
        Dtype::Fp32 => s,
        Dtype::Fp16 => f16::from_f32(s).to_f32(),
        Dtype::Bf16 => bf16::from_f32(s).to_f32(),
    }
}

pub fn build(
    spec: &Gemma3Spec,
    g: &mut GraphBuilder,
    dtype: Dtype,
    table: Table,
) -> Result<EmbedGraph, Error> {
    let dt = dtype.onnx();
    let h = spec.hidden;
    g.input(
        "input_ids",
        DataType::Int64,
        &["batch_size".into(), "sequence_length".into()],
    );
    g.input("image_features", dt, &["num_image_tokens".into(), h.into()]);
    g.output(
        "inputs_embeds",
        dt,
        &["batch_size".into(), "sequence_length".into(), h.into()],
    );
    let weight = super::decoder::EMBED_WEIGHT;
    let table = match table {
        Table::Shared(r) => {
            if r.dims != [spec.vocab, h] || r.dtype != dt {
                return Err(Error::Internal(format!(
                    "shared embedding table is {:?} {:?}, expected [{}, {h}] {dt:?}",
                    r.dims, r.dtype, spec.vocab
                )));
            }
            g.weight_shared(weight, r)
        }
        Table::Own(t) => g.weight(weight, dt, &t.shape, &dtype.encode(&t.data))?,
    };

    let image = spec.image_token_id.map(|tok| {
        let tok = g.const_i64("/embed/image_token_id", &[], &[tok as i64]);
        g.op("/embed/is_image/Equal", "Equal", &["input_ids", &tok], &[])
    });
    let ids = match &image {
        None => "input_ids".to_string(),
        Some(mask) => {
            let zero = g.const_i64("/embed/zero", &[], &[0]);
            g.op(
                "/embed/safe_ids/Where",
                "Where",
                &[mask, &zero, "input_ids"],
                &[],
            )
        }
    };
    let rows = g.op("/embed/Gather", "Gather", &[&table, &ids], &[]);
    let scale = embed_scale(h, dtype);
    let scale_c = g.const_f32("/embed/scale", &[], &[scale]);
    let scaled = match dtype {
        Dtype::Fp32 => g.op("/embed/scale/Mul", "Mul", &[&rows, &scale_c], &[]),
        _ => {
            let f = g.op(
                "/embed/scale/Cast_f32",
                "Cast",
                &[&rows],
                &[("to", Attr::Int(DataType::Float as i64))],
            );
            let m = g.op("/embed/scale/Mul", "Mul", &[&f, &scale_c], &[]);
            g.op(
                "/embed/scale/Cast_back",
                "Cast",
                &[&m],
                &[("to", Attr::Int(dt as i64))],
            )
        }
    };
    let merged = match &image {
        // Text-only checkpoint: no placeholder token, `image_features` is declared (one contract
        // for every Gemma 3 folder) and unused.
        None => scaled,
        Some(mask) => {
            let nz = g.op("/embed/image_positions/NonZero", "NonZero", &[mask], &[]);
            let idx = g.op(
                "/embed/image_positions/Transpose",
                "Transpose",
                &[&nz],
                &[("perm", Attr::Ints(vec![1, 0]))],
            );
            g.op(
                "/embed/merge/ScatterND",
                "ScatterND",
                &[&scaled, &idx, "image_features"],
                &[],
            )
        }
    };
    g.identity_output("/embed/Identity", &merged, "inputs_embeds");
    Ok(EmbedGraph {
        graph: "embed.onnx".into(),
        input_ids: "input_ids".into(),
        image_features: "image_features".into(),
        inputs_embeds: "inputs_embeds".into(),
        image_token_id: spec.image_token_id,
        embed_scale: scale,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// transformers' own example (Gemma3TextModel's comment): √3072 = 55.4256 becomes 55.5 in bf16.
    #[test]
    fn scale_is_rounded_to_the_weight_dtype() {
        assert_eq!(embed_scale(3072, Dtype::Bf16), 55.5);
        assert_eq!(embed_scale(3072, Dtype::Fp32), 3072f32.sqrt());
        assert_eq!(embed_scale(2560, Dtype::Bf16), 50.5);
    }
}
