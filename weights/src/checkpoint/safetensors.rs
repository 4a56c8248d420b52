//! safetensors shards, memory-mapped. The header is parsed here (8-byte little-endian length,
//! then JSON) rather than by a library so that every corruption is reported with the file and
//! tensor it concerns, and offsets are checked against the file before any read.

use super::{Tensor, TensorSource};
use crate::Error;
use half::{bf16, f16};
use memmap2::Mmap;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Dtype {
    F32,
    F16,
    Bf16,
}

struct Entry {
    shard: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Absolute byte range in the shard file.
    start: usize,
    end: usize,
}

pub struct SafetensorsSource {
    shards: Vec<(PathBuf, Mmap)>,
    tensors: BTreeMap<String, Entry>,
}

/// Largest header we accept; real headers are well under this, and a corrupt length would
/// otherwise make us allocate gigabytes.
const MAX_HEADER: u64 = 100 << 20;

impl SafetensorsSource {
    /// Opens `model.safetensors`, or the shards listed by `model.safetensors.index.json`.
    pub fn open_dir(dir: &Path) -> Result<Self, Error> {
        Self::open_dir_stem(dir, "model")
    }

    /// A pipeline component folder: transformers names its weights `model.*`, diffusers
    /// `diffusion_pytorch_model.*`; whichever is present (single file or index) is opened.
    pub fn open_component(dir: &Path) -> Result<Self, Error> {
        const DIFFUSERS: &str = "diffusion_pytorch_model";
        let has = |stem: &str| {
            dir.join(format!("{stem}.safetensors")).exists()
                || dir.join(format!("{stem}.safetensors.index.json")).exists()
        };
        if !has("model") && has(DIFFUSERS) {
            Self::open_dir_stem(dir, DIFFUSERS)
        } else {
            Self::open_dir_stem(dir, "model")
        }
    }

    /// Opens `{stem}.safetensors`, or the shards listed by `{stem}.safetensors.index.json`.
    fn open_dir_stem(dir: &Path, stem: &str) -> Result<Self, Error> {
        let index = dir.join(format!("{stem}.safetensors.index.json"));
        let files: Vec<PathBuf> = if index.exists() {
            #[derive(serde::Deserialize)]
            struct Index {
                weight_map: BTreeMap<String, String>,
            }
            let idx: Index = super::read_json(&index)?;
            let mut names: Vec<&String> = idx.weight_map.values().collect();
            names.sort();
            names.dedup();
            names.into_iter().map(|n| dir.join(n)).collect()
        } else {
            let single = dir.join(format!("{stem}.safetensors"));
            if !single.exists() {
                return Err(Error::MissingFile {
                    path: single,
                    why: format!("no {stem}.safetensors and no {stem}.safetensors.index.json"),
                });
            }
            vec![single]
        };
        Self::open_files(&files)
    }

    pub fn open_files(files: &[PathBuf]) -> Result<Self, Error> {
        let mut shards = Vec::new();
        let mut tensors = BTreeMap::new();
        for (i, path) in files.iter().enumerate() {
            let file = File::open(path).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Error::MissingFile {
                        path: path.clone(),
                        why: "listed in the safetensors index".into(),
                    }
                } else {
                    Error::io(path, e)
                }
            })?;
            // SAFETY: the checkpoint files are treated as read-only inputs for the duration of
            // the build; a concurrent writer would be a user error we cannot guard against.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
            parse_header(path, i, &map, &mut tensors)?;
            shards.push((path.clone(), map));
        }
        Ok(SafetensorsSource { shards, tensors })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(|s| s.as_str())
    }
}

fn parse_header(
    path: &Path,
    shard: usize,
    map: &[u8],
    out: &mut BTreeMap<String, Entry>,
) -> Result<(), Error> {
    let bad = |msg: String| Error::Safetensors {
        file: path.to_path_buf(),
        msg,
    };
    if map.len() < 8 {
        return Err(bad(format!(
            "file is {} bytes, shorter than the header length",
            map.len()
        )));
    }
    let n = u64::from_le_bytes(map[..8].try_into().unwrap());
    if n > MAX_HEADER || 8 + n > map.len() as u64 {
        return Err(bad(format!(
            "header length {n} exceeds the file ({} bytes)",
            map.len()
        )));
    }
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&map[8..8 + n as usize])
            .map_err(|e| bad(format!("header is not a JSON object: {e}")))?;
    let base = 8 + n as usize;
    for (name, v) in header {
        if name == "__metadata__" {
            continue;
        }
        let tbad = |msg: &str| bad(format!("tensor {name:?}: {msg}"));
        let dtype = match v.get("dtype").and_then(|d| d.as_str()) {
            Some("F32") => Dtype::F32,
            Some("F16") => Dtype::F16,
            Some("BF16") => Dtype::Bf16,
            Some(other) => return Err(tbad(&format!("unsupported dtype {other}"))),
            None => return Err(tbad("no dtype")),
        };
        let shape: Vec<usize> = v
            .get("shape")
            .and_then(|s| serde_json::from_value(s.clone()).ok())
            .ok_or_else(|| tbad("no valid shape"))?;
        let offs: [usize; 2] = v
            .get("data_offsets")
            .and_then(|s| serde_json::from_value(s.clone()).ok())
            .ok_or_else(|| tbad("no valid data_offsets"))?;
        let elem = if dtype == Dtype::F32 { 4 } else { 2 };
        let want = shape
            .iter()
            .try_fold(elem, |acc: usize, &d| acc.checked_mul(d))
            .ok_or_else(|| tbad("shape overflows"))?;
        if offs[1] < offs[0] || offs[1] - offs[0] != want {
            return Err(tbad(&format!(
                "data_offsets {offs:?} do not hold {want} bytes for shape {shape:?}"
            )));
        }
        if base + offs[1] > map.len() {
            return Err(tbad(&format!(
                "data ends at byte {} beyond the end of the file ({} bytes)",
                base + offs[1],
                map.len()
            )));
        }
        out.insert(
            name,
            Entry {
                shard,
                dtype,
                shape,
                start: base + offs[0],
                end: base + offs[1],
            },
        );
    }
    Ok(())
}

impl TensorSource for SafetensorsSource {
    fn get(&self, name: &str) -> Result<Tensor, Error> {
        let e = self.tensors.get(name).ok_or_else(|| Error::MissingTensor {
            file: self.shards.first().map(|s| s.0.clone()).unwrap_or_default(),
            tensor: name.to_string(),
        })?;
        let bytes = &self.shards[e.shard].1[e.start..e.end];
        let data: Vec<f32> = match e.dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::Bf16 => bytes
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        };
        release_pages(&self.shards[e.shard].1, e.start, e.end);
        Ok(Tensor::new(e.shape.clone(), data))
    }

    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    fn file_of(&self, name: &str) -> PathBuf {
        match self.tensors.get(name) {
            Some(e) => self.shards[e.shard].0.clone(),
            None => self.shards.first().map(|s| s.0.clone()).unwrap_or_default(),
        }
    }
}

/// Drops the mapped pages of a tensor once it has been converted: each tensor is read once, and
/// without this a multi-GB checkpoint stays resident (and counted in RSS) for the whole build.
/// Only whole pages inside the range are released; failure is harmless (pages stay cached).
fn release_pages(map: &Mmap, start: usize, end: usize) {
    const PAGE: usize = 4096;
    let (a, b) = (start.div_ceil(PAGE) * PAGE, end / PAGE * PAGE);
    if b > a {
        // SAFETY: a read-only file mapping; after MADV_DONTNEED, later reads of
        // these pages fault them back in from the file, so no reader can observe a change.
        let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, a, b - a) };
    }
}
