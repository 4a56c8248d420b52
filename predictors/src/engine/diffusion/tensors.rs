//! f32 buffers in and out of the FLUX graphs, whose float tensors are in the build's dtype
//! (`float32`, `float16` or `bfloat16`, as `pipeline.json` / `transformer.json` name it).

use half::{bf16, f16};
use ort::value::{DynTensor, DynValue, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    F32,
    F16,
    Bf16,
}

impl Elem {
    pub fn parse(name: &str) -> Result<Elem, String> {
        match name {
            "float32" => Ok(Elem::F32),
            "float16" => Ok(Elem::F16),
            "bfloat16" => Ok(Elem::Bf16),
            other => Err(format!("unsupported graph dtype {other:?}")),
        }
    }
}

/// A tensor of `shape` holding `data` converted to `elem`.
pub fn tensor(elem: Elem, shape: &[usize], data: &[f32]) -> Result<DynTensor, String> {
    let shape = shape.to_vec();
    let r = match elem {
        Elem::F32 => Tensor::from_array((shape, data.to_vec())).map(Tensor::upcast),
        Elem::F16 => Tensor::from_array((
            shape,
            data.iter().map(|&x| f16::from_f32(x)).collect::<Vec<_>>(),
        ))
        .map(Tensor::upcast),
        Elem::Bf16 => Tensor::from_array((
            shape,
            data.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>(),
        ))
        .map(Tensor::upcast),
    };
    r.map_err(|e| e.to_string())
}

/// An f32 tensor (timesteps, guidance, position ids are f32 whatever the build's dtype).
pub fn f32_tensor(shape: &[usize], data: Vec<f32>) -> Result<DynTensor, String> {
    Tensor::from_array((shape.to_vec(), data))
        .map(Tensor::upcast)
        .map_err(|e| e.to_string())
}

/// An int64 tensor of token ids.
pub fn ids_tensor(ids: &[u32]) -> Result<DynTensor, String> {
    let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    Tensor::from_array((vec![1usize, ids.len()], ids))
        .map(Tensor::upcast)
        .map_err(|e| e.to_string())
}

/// Any float output as f32, with its shape.
pub fn to_f32(v: &DynValue) -> Result<(Vec<i64>, Vec<f32>), String> {
    if let Ok((s, d)) = v.try_extract_tensor::<f32>() {
        return Ok((s.to_vec(), d.to_vec()));
    }
    if let Ok((s, d)) = v.try_extract_tensor::<f16>() {
        return Ok((s.to_vec(), d.iter().map(|x| x.to_f32()).collect()));
    }
    let (s, d) = v.try_extract_tensor::<bf16>().map_err(|e| e.to_string())?;
    Ok((s.to_vec(), d.iter().map(|x| x.to_f32()).collect()))
}
