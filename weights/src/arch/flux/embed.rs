//! The conditioning vector `temb` (diffusers' `CombinedTimestepGuidanceTextProjEmbeddings`, or
//! `CombinedTimestepTextProjEmbeddings` without guidance):
//! timestep_embedder(proj(1000·t)) [+ guidance_embedder(proj(1000·g))] + text_embedder(pooled).
//!
//! `proj` is `Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)`: [cos(a), sin(a)] with
//! a = v · exp(−ln(10000)·j/128), computed in float32 whatever the compute dtype (diffusers casts
//! the result to the compute dtype afterwards). The ×1000 happens in the compute dtype first, as
//! the model does it (`timestep.to(hidden_states.dtype) * 1000`).

use super::config::TIME_PROJ_DIM;
use super::ctx::Ctx;
use crate::arch::Dtype;
use crate::onnx::{Attr, DataType};
use crate::quant::Scheme;
use crate::Error;

/// `exp(-ln(10000) · j / half)` for j < half, in float32 as torch evaluates it (the exponent is a
/// float32 product and quotient; the exponential of that float32 value rounded from float64).
pub fn time_frequencies(dim: usize) -> Vec<f32> {
    let half = dim / 2;
    let c = -(10000f64.ln()) as f32;
    (0..half)
        .map(|j| {
            let e = (c * j as f32) / half as f32;
            (e as f64).exp() as f32
        })
        .collect()
}

/// Sinusoidal projection of `v` [batch] (float32 input) → [batch, 256] in the compute dtype.
fn proj(cx: &mut Ctx, name: &str, v: &str, freqs: &str) -> Result<String, Error> {
    let dt = cx.dtype;
    let v = if dt != Dtype::Fp32 {
        cx.cast(&format!("{name}/Cast_dtype"), v, dt.onnx())
    } else {
        v.to_string()
    };
    let k = cx.constant(&format!("{name}/thousand"), &[], &[1000.0])?;
    let scaled = cx.op(&format!("{name}/Mul_1000"), "Mul", &[&v, &k], &[]);
    let scaled = if dt != Dtype::Fp32 {
        cx.cast(&format!("{name}/Cast_f32"), &scaled, DataType::Float)
    } else {
        scaled
    };
    let axes = cx.g.const_i64(&format!("{name}/axes_1"), &[1], &[1]);
    let col = cx.op(
        &format!("{name}/Unsqueeze"),
        "Unsqueeze",
        &[&scaled, &axes],
        &[],
    );
    let args = cx.op(&format!("{name}/Mul_freqs"), "Mul", &[&col, freqs], &[]);
    // sin/cos of arguments up to ~1000 rad: evaluated in float64 and rounded, which is what an
    // accurate float32 sin gives (torch's); ORT's float32 kernels lose digits at that range.
    let args = cx.cast(&format!("{name}/Cast_f64"), &args, DataType::Double);
    let cos = cx.op(&format!("{name}/Cos"), "Cos", &[&args], &[]);
    let sin = cx.op(&format!("{name}/Sin"), "Sin", &[&args], &[]);
    let cos = cx.cast(&format!("{name}/Cos/Cast_f32"), &cos, DataType::Float);
    let sin = cx.cast(&format!("{name}/Sin/Cast_f32"), &sin, DataType::Float);
    let emb = cx.op(
        &format!("{name}/Concat"),
        "Concat",
        &[&cos, &sin],
        &[("axis", Attr::Int(-1))],
    );
    Ok(if dt != Dtype::Fp32 {
        cx.cast(&format!("{name}/Cast_back"), &emb, dt.onnx())
    } else {
        emb
    })
}

/// linear_1 → SiLU → linear_2 of `module` (TimestepEmbedding and PixArtAlphaTextProjection alike).
fn mlp(cx: &mut Ctx, module: &str, x: &str) -> Result<String, Error> {
    let h = cx.linear(&format!("{module}.linear_1"), x, Scheme::None)?;
    let h = cx.silu(&format!("/{module}/act"), &h);
    cx.linear(&format!("{module}.linear_2"), &h, Scheme::None)
}

/// `temb` [batch, hidden] from the graph inputs (guidance: None without `guidance_embeds`).
pub(super) fn conditioning(
    cx: &mut Ctx,
    frequencies: Option<&[f32]>,
    timestep: &str,
    guidance: Option<&str>,
    pooled: &str,
) -> Result<String, Error> {
    let f = match frequencies {
        Some(f) if f.len() == TIME_PROJ_DIM / 2 => f.to_vec(),
        Some(f) => {
            return Err(Error::Internal(format!(
                "{} time frequencies given, {} needed",
                f.len(),
                TIME_PROJ_DIM / 2
            )))
        }
        None => time_frequencies(TIME_PROJ_DIM),
    };
    let bytes: Vec<u8> = f.iter().flat_map(|v| v.to_le_bytes()).collect();
    let freqs = cx.g.weight(
        "time_text_embed.time_proj.frequencies",
        DataType::Float,
        &[1, f.len()],
        &bytes,
    )?;
    let p = "time_text_embed";
    let t = proj(cx, &format!("/{p}/time_proj"), timestep, &freqs)?;
    let t = mlp(cx, &format!("{p}.timestep_embedder"), &t)?;
    let tg = match guidance {
        Some(gd) => {
            let gp = proj(cx, &format!("/{p}/guidance_proj"), gd, &freqs)?;
            let ge = mlp(cx, &format!("{p}.guidance_embedder"), &gp)?;
            cx.op(&format!("/{p}/Add_guidance"), "Add", &[&t, &ge], &[])
        }
        None => t,
    };
    let pe = mlp(cx, &format!("{p}.text_embedder"), pooled)?;
    Ok(cx.op(&format!("/{p}/Add_text"), "Add", &[&tg, &pe], &[]))
}
