//! GGUF container parsing (versions 2 and 3): header, metadata key/values, tensor infos, data
//! offsets. Every read is bounds-checked so a truncated or corrupt file is an error naming the
//! file and, where it applies, the tensor or key.

use crate::Error;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i64),
    UInt(u64),
    Float(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::UInt(v) => Some(*v),
            Value::Int(v) if *v >= 0 => Some(*v as u64),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(v) => Some(*v),
            Value::UInt(v) => Some(*v as f64),
            Value::Int(v) => Some(*v as f64),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// ggml tensor types we can dequantise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q8_0,
    Bf16,
    Q5_0,
    Q5_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
}

impl GgmlType {
    fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            10 => GgmlType::Q2K,
            11 => GgmlType::Q3K,
            12 => GgmlType::Q4K,
            13 => GgmlType::Q5K,
            14 => GgmlType::Q6K,
            15 => GgmlType::Q8K,
            30 => GgmlType::Bf16,
            _ => return None,
        })
    }
    /// ggml's name for the type (`Q4_K`, `F32`).
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Bf16 => "BF16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q2K => "Q2_K",
            GgmlType::Q3K => "Q3_K",
            GgmlType::Q4K => "Q4_K",
            GgmlType::Q5K => "Q5_K",
            GgmlType::Q6K => "Q6_K",
            GgmlType::Q8K => "Q8_K",
        }
    }
    /// (elements per block, bytes per block).
    pub fn block(self) -> (usize, usize) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::Bf16 => (1, 2),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q5_0 => (32, 22),
            GgmlType::Q5_1 => (32, 24),
            GgmlType::Q2K => (256, 84),
            GgmlType::Q3K => (256, 110),
            GgmlType::Q4K => (256, 144),
            GgmlType::Q5K => (256, 176),
            GgmlType::Q6K => (256, 210),
            GgmlType::Q8K => (256, 292),
        }
    }
}

#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// Row-major shape (GGUF stores dimensions innermost first; this is reversed).
    pub shape: Vec<usize>,
    pub ty: GgmlType,
    /// Absolute byte range in the file.
    pub start: usize,
    pub end: usize,
}

pub struct Gguf {
    pub path: PathBuf,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: BTreeMap<String, TensorInfo>,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn err(&self, what: &str) -> Error {
        Error::Gguf {
            file: self.path.to_path_buf(),
            tensor: None,
            msg: format!(
                "truncated or corrupt at byte {} while reading {what}",
                self.pos
            ),
        }
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], Error> {
        if n > self.buf.len().saturating_sub(self.pos) {
            return Err(self.err(what));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u32(&mut self, what: &str) -> Result<u32, Error> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }
    fn u64(&mut self, what: &str) -> Result<u64, Error> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
    }
    fn string(&mut self, what: &str) -> Result<String, Error> {
        let n = self.u64(what)? as usize;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.err(what))
    }
    fn value(&mut self, ty: u32, what: &str, depth: usize) -> Result<Value, Error> {
        Ok(match ty {
            0 => Value::UInt(self.take(1, what)?[0] as u64),
            1 => Value::Int(self.take(1, what)?[0] as i8 as i64),
            2 => Value::UInt(u16::from_le_bytes(self.take(2, what)?.try_into().unwrap()) as u64),
            3 => Value::Int(i16::from_le_bytes(self.take(2, what)?.try_into().unwrap()) as i64),
            4 => Value::UInt(self.u32(what)? as u64),
            5 => Value::Int(self.u32(what)? as i32 as i64),
            6 => Value::Float(f32::from_le_bytes(self.take(4, what)?.try_into().unwrap()) as f64),
            7 => Value::Bool(self.take(1, what)?[0] != 0),
            8 => Value::Str(self.string(what)?),
            9 if depth == 0 => {
                let inner = self.u32(what)?;
                let n = self.u64(what)? as usize;
                // Each element takes at least one byte: a larger count is corruption.
                if n > self.buf.len() - self.pos {
                    return Err(self.err(what));
                }
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.value(inner, what, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::UInt(self.u64(what)?),
            11 => Value::Int(self.u64(what)? as i64),
            12 => Value::Float(f64::from_le_bytes(self.take(8, what)?.try_into().unwrap())),
            _ => return Err(self.err(&format!("{what} (value type {ty})"))),
        })
    }
}

impl Gguf {
    /// Parses the header of `buf` (the whole file, usually memory-mapped).
    pub fn parse(path: &Path, buf: &[u8]) -> Result<Gguf, Error> {
        let mut c = Cursor { buf, pos: 0, path };
        let bad = |msg: String| Error::Gguf {
            file: path.to_path_buf(),
            tensor: None,
            msg,
        };
        if c.take(4, "the magic")? != b"GGUF" {
            return Err(bad("not a GGUF file (bad magic)".into()));
        }
        let version = c.u32("the version")?;
        if !(2..=3).contains(&version) {
            return Err(bad(format!("GGUF version {version} (supported: 2, 3)")));
        }
        let n_tensors = c.u64("the tensor count")? as usize;
        let n_kv = c.u64("the metadata count")? as usize;
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = c.string(&format!("metadata key #{i}"))?;
            let ty = c.u32(&format!("the type of {key}"))?;
            let v = c.value(ty, &format!("metadata value {key}"), 0)?;
            metadata.insert(key, v);
        }
        let mut infos = Vec::new();
        for i in 0..n_tensors {
            let name = c.string(&format!("tensor name #{i}"))?;
            let nd = c.u32(&format!("dimensions of {name}"))? as usize;
            if nd > 4 {
                return Err(bad(format!("tensor {name:?}: {nd} dimensions")));
            }
            let mut dims = Vec::with_capacity(nd);
            for _ in 0..nd {
                dims.push(c.u64(&format!("dimensions of {name}"))? as usize);
            }
            let ty_id = c.u32(&format!("type of {name}"))?;
            let offset = c.u64(&format!("offset of {name}"))? as usize;
            infos.push((name, dims, ty_id, offset));
        }
        let align = metadata
            .get("general.alignment")
            .and_then(|v| v.as_u64())
            .unwrap_or(32) as usize;
        let data_start = c.pos.div_ceil(align) * align;
        let mut tensors = BTreeMap::new();
        for (name, dims, ty_id, offset) in infos {
            let terr = |msg: String| Error::Gguf {
                file: path.to_path_buf(),
                tensor: Some(name.clone()),
                msg,
            };
            let ty = GgmlType::from_id(ty_id).ok_or_else(|| {
                terr(format!(
                    "ggml type {ty_id} is not supported (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, \
                     Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K)"
                ))
            })?;
            let count: usize = dims.iter().product();
            let (per, bytes) = ty.block();
            // Blocks never straddle rows: the innermost dimension is whole blocks.
            let row = dims.first().copied().unwrap_or(1);
            if !row.is_multiple_of(per) {
                return Err(terr(format!(
                    "rows of {row} elements are not whole {per}-element blocks"
                )));
            }
            let len = count / per * bytes;
            let start = data_start + offset;
            if start + len > buf.len() {
                return Err(terr(format!(
                    "data [{start}, {}) runs past the end of the file ({} bytes): truncated?",
                    start + len,
                    buf.len()
                )));
            }
            let shape = dims.into_iter().rev().collect();
            tensors.insert(
                name,
                TensorInfo {
                    shape,
                    ty,
                    start,
                    end: start + len,
                },
            );
        }
        Ok(Gguf {
            path: path.to_path_buf(),
            metadata,
            tensors,
        })
    }
}
