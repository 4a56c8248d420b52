//! Checkpoint readers. Whatever the source format, the builders see named tensors as f32 (exact
//! for bf16/f16 sources; GGUF blocks are dequantised) plus a parsed `config.json`.

pub mod config;
pub mod safetensors;

use crate::Error;
use std::path::{Path, PathBuf};

/// A dense f32 tensor in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor { shape, data }
    }

    /// Rows of a 2-D tensor `[rows, cols]` concatenated along the first axis.
    pub fn concat_rows(parts: &[Tensor]) -> Tensor {
        let cols = parts[0].shape[1];
        let rows = parts.iter().map(|p| p.shape[0]).sum();
        let mut data = Vec::with_capacity(rows * cols);
        for p in parts {
            data.extend_from_slice(&p.data);
        }
        Tensor::new(vec![rows, cols], data)
    }

    /// The transpose of a 2-D tensor.
    pub fn transpose2(&self) -> Tensor {
        let (r, c) = (self.shape[0], self.shape[1]);
        let mut out = vec![0f32; r * c];
        // Blocked so large matrices stay cache-friendly.
        const B: usize = 64;
        for i0 in (0..r).step_by(B) {
            for j0 in (0..c).step_by(B) {
                for i in i0..(i0 + B).min(r) {
                    for j in j0..(j0 + B).min(c) {
                        out[j * r + i] = self.data[i * c + j];
                    }
                }
            }
        }
        Tensor::new(vec![c, r], out)
    }
}

/// A source of named tensors: safetensors shards or a GGUF file.
pub trait TensorSource {
    /// The tensor, converted to f32. Errors name the file and tensor.
    fn get(&self, name: &str) -> Result<Tensor, Error>;
    fn contains(&self, name: &str) -> bool;
    /// File used in error messages about a tensor (its shard, or the GGUF).
    fn file_of(&self, name: &str) -> PathBuf;

    /// [`TensorSource::get`] that also checks the shape.
    fn get_shaped(&self, name: &str, shape: &[usize]) -> Result<Tensor, Error> {
        let t = self.get(name)?;
        if t.shape != shape {
            return Err(Error::ShapeMismatch {
                file: self.file_of(name),
                tensor: name.to_string(),
                expected: shape.to_vec(),
                got: t.shape,
            });
        }
        Ok(t)
    }
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, Error> {
    let bytes = std::fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::MissingFile {
                path: path.to_path_buf(),
                why: "needed to read the checkpoint".into(),
            }
        } else {
            Error::io(path, e)
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })
}
