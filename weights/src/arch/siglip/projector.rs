//! Gemma3MultiModalProjector: the tower's patch grid pooled to `mm_tokens_per_image` tokens,
//! normalised and projected to the text model's width.

use super::{Ctx, VisionNames, VisionSpec, IMAGE_FEATURES};
use crate::arch::graph;
use crate::onnx::Attr;
use crate::Error;

/// Gemma3MultiModalProjector on `[b, P, D]`: k×k average pool of the patch grid, RMSNorm with
/// gain (1 + w), product with `mm_input_projection_weight` `[D, text_hidden]`.
pub(super) fn project(
    cx: &mut Ctx,
    spec: &VisionSpec,
    names: &VisionNames,
    x: &str,
) -> Result<(), Error> {
    let (d, t, k) = (spec.hidden, spec.tokens_per_side(), spec.pool());
    // Patch (r·k + i, c·k + j) of the row-major grid is at [r, i, c, j]; the mean over i and j
    // is pooled token r·t + c, the order AvgPool2d + flatten gives.
    let (ti, ki) = (t as i64, k as i64);
    let grid = cx.g.const_i64(
        "/multi_modal_projector/pool_shape",
        &[6],
        &[0, ti, ki, ti, ki, d as i64],
    );
    let y = cx.g.op(
        "/multi_modal_projector/Reshape",
        "Reshape",
        &[x, &grid],
        &[],
    );
    let axes =
        cx.g.const_i64("/multi_modal_projector/pool_axes", &[2], &[2, 4]);
    let y = cx.g.op(
        "/multi_modal_projector/avg_pool/ReduceMean",
        "ReduceMean",
        &[&y, &axes],
        &[("keepdims", Attr::Int(0))],
    );
    let tokens = cx.g.const_i64(
        "/multi_modal_projector/tokens_shape",
        &[3],
        &[0, spec.mm_tokens as i64, d as i64],
    );
    let y = cx.g.op(
        "/multi_modal_projector/Reshape_1",
        "Reshape",
        &[&y, &tokens],
        &[],
    );
    let p = &names.projector;
    let mut gain = cx.load(&format!("{p}mm_soft_emb_norm.weight"), &[d])?;
    gain.data.iter_mut().for_each(|w| *w += 1.0);
    let gain = cx.weight(&format!("{p}mm_soft_emb_norm.gain"), &gain)?;
    let y = graph::rms_norm(
        cx.g,
        "/multi_modal_projector/mm_soft_emb_norm/SimplifiedLayerNorm",
        &y,
        &gain,
        spec.eps,
    );
    let w = cx.load(
        &format!("{p}mm_input_projection_weight"),
        &[d, spec.text_hidden],
    )?;
    let w = cx.weight(&format!("{p}mm_input_projection_weight"), &w)?;
    cx.g.node_with(
        "/multi_modal_projector/MatMul",
        "MatMul",
        "",
        &[&y, &w],
        &[IMAGE_FEATURES.to_string()],
        &[],
    );
    Ok(())
}
