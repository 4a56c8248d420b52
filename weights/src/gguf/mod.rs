//! GGUF input (llama architecture): tensors dequantised on load under their Hugging Face names,
//! llama.cpp's Q/K row permutation undone, the spec read from metadata, and tokenizer.json plus
//! the chat template rebuilt from the `tokenizer.*` keys. Gemma 3 files (`gemma3`) go through
//! [`gemma3`] and [`spm`] instead (see `build::build`).

pub mod dequant;
pub mod gemma3;
pub mod kquants;
pub mod reader;
pub mod spm;
pub mod tokenizer;

use crate::arch::{Arch, DecoderSpec, Rope};
use crate::build::Loaded;
use crate::checkpoint::{Tensor, TensorSource};
use crate::Error;
use memmap2::Mmap;
use reader::{Gguf, Value};
use std::path::{Path, PathBuf};

pub struct GgufSource {
    gguf: Gguf,
    map: Mmap,
    heads: usize,
    kv_heads: usize,
}

/// The vocabulary size of a GGUF (llama and gemma3 alike): the rows of `token_embd.weight`.
pub(crate) fn vocab_size(g: &Gguf) -> Result<usize, Error> {
    g.tensors
        .get("token_embd.weight")
        .map(|t| t.shape[0])
        .ok_or_else(|| Error::MissingTensor {
            file: g.path.clone(),
            tensor: "token_embd.weight".into(),
        })
}

/// The metadata error for `g` (a missing or malformed key).
pub(crate) fn metadata_error(g: &Gguf, msg: String) -> Error {
    Error::Gguf {
        file: g.path.clone(),
        tensor: None,
        msg,
    }
}

/// Errors unless `tokenizer.ggml.model` is `want`, the only tokenizer model the caller rebuilds;
/// `what` names it in the error (e.g. "byte-level BPE").
pub(crate) fn require_tokenizer_model(
    g: &Gguf,
    family: &str,
    want: &str,
    what: &str,
) -> Result<(), Error> {
    let model = g
        .metadata
        .get("tokenizer.ggml.model")
        .and_then(Value::as_str)
        .unwrap_or("");
    if model != want {
        return Err(Error::Unsupported(format!(
            "{}: {family}tokenizer model {model:?} (only {what}, {want:?}, is rebuilt)",
            g.path.display()
        )));
    }
    Ok(())
}

/// The GGUF name for a Hugging Face tensor name, and the head count to un-permute rows by
/// (q and k only).
fn gguf_name(hf: &str, heads: usize, kv_heads: usize) -> Option<(String, Option<usize>)> {
    match hf {
        "model.embed_tokens.weight" => return Some(("token_embd.weight".into(), None)),
        "model.norm.weight" => return Some(("output_norm.weight".into(), None)),
        "lm_head.weight" => return Some(("output.weight".into(), None)),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (i, rest) = rest.split_once('.')?;
    let (g, perm) = match rest {
        "input_layernorm.weight" => ("attn_norm", None),
        "post_attention_layernorm.weight" => ("ffn_norm", None),
        "self_attn.q_proj.weight" => ("attn_q", Some(heads)),
        "self_attn.k_proj.weight" => ("attn_k", Some(kv_heads)),
        "self_attn.v_proj.weight" => ("attn_v", None),
        "self_attn.o_proj.weight" => ("attn_output", None),
        "mlp.gate_proj.weight" => ("ffn_gate", None),
        "mlp.up_proj.weight" => ("ffn_up", None),
        "mlp.down_proj.weight" => ("ffn_down", None),
        _ => return None,
    };
    Some((format!("blk.{i}.{g}.weight"), perm))
}

/// llama.cpp's converter interleaves the two rotary halves of every head's rows (so its
/// kernels can rotate adjacent pairs); transformers keeps them as two halves. Row `2b + a` of a
/// head in GGUF is row `a * d/2 + b` in Hugging Face order.
fn unpermute(t: &Tensor, heads: usize) -> Tensor {
    let (rows, cols) = (t.shape[0], t.shape[1]);
    let d = rows / heads;
    let mut out = vec![0f32; rows * cols];
    for h in 0..heads {
        for b in 0..d / 2 {
            for a in 0..2 {
                let src = h * d + 2 * b + a;
                let dst = h * d + a * (d / 2) + b;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&t.data[src * cols..(src + 1) * cols]);
            }
        }
    }
    Tensor::new(t.shape.clone(), out)
}

impl TensorSource for GgufSource {
    fn get(&self, name: &str) -> Result<Tensor, Error> {
        let missing = || Error::MissingTensor {
            file: self.gguf.path.clone(),
            tensor: name.to_string(),
        };
        let (gname, perm) = gguf_name(name, self.heads, self.kv_heads).ok_or_else(missing)?;
        let info = self
            .gguf
            .tensors
            .get(&gname)
            .ok_or_else(|| Error::MissingTensor {
                file: self.gguf.path.clone(),
                tensor: gname.clone(),
            })?;
        let mut data = Vec::with_capacity(info.shape.iter().product());
        dequant::dequantize(info.ty, &self.map[info.start..info.end], &mut data);
        let t = Tensor::new(info.shape.clone(), data);
        Ok(match perm {
            Some(h) if t.shape.len() == 2 && t.shape[0].is_multiple_of(2 * h) => unpermute(&t, h),
            Some(_) => {
                return Err(Error::Gguf {
                    file: self.gguf.path.clone(),
                    tensor: Some(gname),
                    msg: format!("shape {:?} does not split into heads", t.shape),
                })
            }
            None => t,
        })
    }

    fn contains(&self, name: &str) -> bool {
        gguf_name(name, self.heads, self.kv_heads)
            .is_some_and(|(g, _)| self.gguf.tensors.contains_key(&g))
    }

    fn file_of(&self, _name: &str) -> PathBuf {
        self.gguf.path.clone()
    }
}

/// Memory-maps a GGUF file and parses its header; the map is kept beside the parsed [`Gguf`]
/// because tensors are read from it later (llama and gemma3 loaders alike).
pub(crate) fn map_file(path: &Path) -> Result<(Gguf, Mmap), Error> {
    let file = std::fs::File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::MissingFile {
                path: path.to_path_buf(),
                why: "the GGUF input".into(),
            }
        } else {
            Error::io(path, e)
        }
    })?;
    // SAFETY: read-only input for the duration of the build.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    Ok((Gguf::parse(path, &map)?, map))
}

/// The file's `general.architecture` ("" when absent).
pub(crate) fn architecture(g: &Gguf) -> &str {
    g.metadata
        .get("general.architecture")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// [`Error::UnknownArchitecture`] unless the file's architecture is `want`, the one the caller
/// reads.
pub(crate) fn require_architecture(g: &Gguf, want: &str) -> Result<(), Error> {
    let arch = architecture(g);
    if arch != want {
        return Err(Error::UnknownArchitecture {
            path: g.path.clone(),
            name: arch.to_string(),
            supported: format!("{want} (GGUF)"),
        });
    }
    Ok(())
}

/// Opens a GGUF file: spec, tensors, and tokenizer/template files for the output folder.
pub fn load(path: &Path) -> Result<Loaded, Error> {
    let (gguf, map) = map_file(path)?;
    let spec = spec(&gguf)?;
    let extra_files = tokenizer::files(&gguf, &spec)?;
    Ok(Loaded {
        source: Box::new(GgufSource {
            heads: spec.heads,
            kv_heads: spec.kv_heads,
            gguf,
            map,
        }),
        spec,
        extra_files,
    })
}

fn spec(g: &Gguf) -> Result<DecoderSpec, Error> {
    require_architecture(g, "llama")?;
    let meta_err = |k: &str| metadata_error(g, format!("metadata {k} is missing or not a number"));
    let uint = |k: &str| -> Result<usize, Error> {
        g.metadata
            .get(k)
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| meta_err(k))
    };
    let hidden = uint("llama.embedding_length")?;
    let heads = uint("llama.attention.head_count")?;
    let kv_heads = uint("llama.attention.head_count_kv").unwrap_or(heads);
    let layers = uint("llama.block_count")?;
    if g.metadata.contains_key("llama.rope.scaling.type")
        || g.tensors.contains_key("rope_freqs.weight")
    {
        let kind = g
            .metadata
            .get("llama.rope.scaling.type")
            .and_then(Value::as_str)
            .unwrap_or("rope_freqs");
        if kind != "none" {
            return Err(Error::Unsupported(format!(
                "{}: GGUF rope scaling {kind:?}",
                g.path.display()
            )));
        }
    }
    let vocab = vocab_size(g)?;
    let tok = |k: &str| g.metadata.get(k).and_then(Value::as_u64).map(|v| v as u32);
    Ok(DecoderSpec {
        arch: Arch::Llama,
        hidden,
        intermediate: uint("llama.feed_forward_length")?,
        layers,
        heads,
        kv_heads,
        head_dim: uint("llama.attention.key_length").unwrap_or(hidden / heads),
        vocab,
        eps: g
            .metadata
            .get("llama.attention.layer_norm_rms_epsilon")
            .and_then(Value::as_f64)
            .unwrap_or(1e-5) as f32,
        rope: Rope {
            theta: g
                .metadata
                .get("llama.rope.freq_base")
                .and_then(Value::as_f64)
                .unwrap_or(10000.0),
            scaling: None,
        },
        rope_layers: vec![true; layers],
        tied: !g.tensors.contains_key("output.weight"),
        context_length: uint("llama.context_length")?,
        sliding_window: None,
        bos_token_id: tok("tokenizer.ggml.bos_token_id"),
        eos_token_ids: tok("tokenizer.ggml.eos_token_id").into_iter().collect(),
        pad_token_id: tok("tokenizer.ggml.padding_token_id"),
    })
}
