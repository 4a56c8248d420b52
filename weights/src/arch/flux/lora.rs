//! FLUX LoRA files in either key layout, normalised to one form: target module (diffusers name
//! inside the transformer, e.g. `transformer_blocks.0.attn.to_q`) → A (rank × in), B (out × rank),
//! scale = alpha / rank. The transformer graph's LoRA slots are filled from this form.
//!
//! Layouts accepted:
//! - diffusers/PEFT: `transformer.<module>.lora_A.weight` / `.lora_B.weight` (optional
//!   `<module>.alpha`; without it alpha = rank, as diffusers assumes).
//! - kohya/ai-toolkit: `lora_unet_<name>.lora_down.weight` / `.lora_up.weight` / `.alpha`, where
//!   `<name>` is either BFL's original module path (`double_blocks_3_img_attn_qkv`,
//!   `single_blocks_7_linear1`, ...; fused projections are split as diffusers'
//!   `_convert_kohya_flux_lora_to_diffusers` splits them) or a diffusers module path with `.`
//!   flattened to `_` (`transformer_blocks_3_attn_to_q`).

use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, BTreeSet};

/// A row-major f32 matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl Matrix {
    fn rows_range(&self, start: usize, count: usize) -> Matrix {
        Matrix {
            rows: count,
            cols: self.cols,
            data: self.data[start * self.cols..(start + count) * self.cols].to_vec(),
        }
    }

    /// The transpose.
    pub fn transpose(&self) -> Matrix {
        let mut data = vec![0.0f32; self.data.len()];
        for r in 0..self.rows {
            for c in 0..self.cols {
                data[c * self.rows + r] = self.data[r * self.cols + c];
            }
        }
        Matrix {
            rows: self.cols,
            cols: self.rows,
            data,
        }
    }

    /// self · other.
    pub fn matmul(&self, other: &Matrix) -> Matrix {
        assert_eq!(self.cols, other.rows, "matmul shapes");
        let mut data = vec![0.0f32; self.rows * other.cols];
        for i in 0..self.rows {
            for k in 0..self.cols {
                let a = self.data[i * self.cols + k];
                let row = &other.data[k * other.cols..(k + 1) * other.cols];
                for (o, b) in data[i * other.cols..(i + 1) * other.cols]
                    .iter_mut()
                    .zip(row)
                {
                    *o += a * b;
                }
            }
        }
        Matrix {
            rows: self.rows,
            cols: other.cols,
            data,
        }
    }
}

/// One adapted linear layer: W' = W + lora_scale · scale · B·A.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraLayer {
    /// A (`lora_A` / `lora_down`): rank × in_features.
    pub down: Matrix,
    /// B (`lora_B` / `lora_up`): out_features × rank.
    pub up: Matrix,
    /// alpha / rank.
    pub scale: f32,
}

impl LoraLayer {
    pub fn rank(&self) -> usize {
        self.down.rows
    }

    /// scale · B·A (out × in): the weight change at lora_scale 1.
    pub fn delta(&self) -> Matrix {
        let mut d = self.up.matmul(&self.down);
        d.data.iter_mut().for_each(|x| *x *= self.scale);
        d
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Peft,
    Kohya,
}

/// A LoRA file, normalised.
#[derive(Debug, Clone, PartialEq)]
pub struct Lora {
    pub layout: Layout,
    /// Target module → layer, sorted by name.
    pub layers: BTreeMap<String, LoraLayer>,
    /// Keys for parts FLUX's transformer does not have here (text-encoder LoRAs), left out.
    pub skipped: Vec<String>,
}

impl Lora {
    /// The largest rank over all layers (the slot rank this LoRA needs).
    pub fn max_rank(&self) -> usize {
        self.layers.values().map(LoraLayer::rank).max().unwrap_or(0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    #[error("not a safetensors file: {0}")]
    Format(String),
    #[error("{0}: unsupported dtype {1:?} (expected F32, F16 or BF16)")]
    Dtype(String, Dtype),
    #[error("{key}: expected a {want}-d tensor, got shape {got:?}")]
    Shape {
        key: String,
        want: usize,
        got: Vec<usize>,
    },
    #[error("no LoRA keys (neither lora_A/lora_B nor lora_down/lora_up)")]
    Empty,
    #[error("mixes diffusers/PEFT and kohya key layouts")]
    MixedLayouts,
    #[error("{0}: has one of its down/up (A/B) pair only")]
    Unpaired(String),
    #[error("{module}: A is {a_rows}×{a_cols} and B is {b_rows}×{b_cols}; their ranks differ")]
    Rank {
        module: String,
        a_rows: usize,
        a_cols: usize,
        b_rows: usize,
        b_cols: usize,
    },
    #[error("{0}: not a module of FLUX's transformer")]
    UnknownModule(String),
    #[error("{key}: cannot split {rows} output rows into {parts:?}")]
    Split {
        key: String,
        rows: usize,
        parts: Vec<usize>,
    },
    #[error("unrecognised keys: {0}")]
    Unrecognised(String),
    #[error("reading {0}: {1}")]
    Io(String, std::io::Error),
}

/// Reads and normalises a LoRA file.
pub fn load(path: &std::path::Path) -> Result<Lora, LoraError> {
    let bytes = std::fs::read(path).map_err(|e| LoraError::Io(path.display().to_string(), e))?;
    from_bytes(&bytes)
}

/// Normalises the bytes of a LoRA safetensors file.
pub fn from_bytes(bytes: &[u8]) -> Result<Lora, LoraError> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| LoraError::Format(e.to_string()))?;
    let names: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
    let peft = names
        .iter()
        .any(|k| k.contains(".lora_A.") || k.contains(".lora_B."));
    let kohya = names
        .iter()
        .any(|k| k.contains(".lora_down.") || k.contains(".lora_up."));
    match (peft, kohya) {
        (true, true) => Err(LoraError::MixedLayouts),
        (true, false) => peft_layers(&st, &names),
        (false, true) => kohya_layers(&st, &names),
        (false, false) => Err(LoraError::Empty),
    }
}

fn tensor(st: &SafeTensors, key: &str, dims: usize) -> Result<(Vec<usize>, Vec<f32>), LoraError> {
    let t = st
        .tensor(key)
        .map_err(|e| LoraError::Format(e.to_string()))?;
    let shape = t.shape().to_vec();
    if shape.len() != dims {
        return Err(LoraError::Shape {
            key: key.into(),
            want: dims,
            got: shape,
        });
    }
    let b = t.data();
    let data = match t.dtype() {
        Dtype::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => b
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => b
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        d => return Err(LoraError::Dtype(key.into(), d)),
    };
    Ok((shape, data))
}

fn matrix(st: &SafeTensors, key: &str) -> Result<Matrix, LoraError> {
    let (shape, data) = tensor(st, key, 2)?;
    Ok(Matrix {
        rows: shape[0],
        cols: shape[1],
        data,
    })
}

/// An alpha tensor (a scalar, stored as shape [] or [1]).
fn alpha(st: &SafeTensors, key: &str) -> Result<Option<f32>, LoraError> {
    if st.tensor(key).is_err() {
        return Ok(None);
    }
    let t = st
        .tensor(key)
        .map_err(|e| LoraError::Format(e.to_string()))?;
    let dims = t.shape().len();
    let (_, data) = tensor(st, key, dims)?;
    match data.as_slice() {
        [a] => Ok(Some(*a)),
        _ => Err(LoraError::Shape {
            key: key.into(),
            want: 0,
            got: t.shape().to_vec(),
        }),
    }
}

fn layer(
    module: &str,
    down: Matrix,
    up: Matrix,
    alpha: Option<f32>,
) -> Result<LoraLayer, LoraError> {
    if down.rows != up.cols {
        return Err(LoraError::Rank {
            module: module.into(),
            a_rows: down.rows,
            a_cols: down.cols,
            b_rows: up.rows,
            b_cols: up.cols,
        });
    }
    let rank = down.rows as f32;
    Ok(LoraLayer {
        down,
        up,
        scale: alpha.unwrap_or(rank) / rank,
    })
}

fn is_text_encoder(key: &str) -> bool {
    key.starts_with("text_encoder") || key.starts_with("lora_te")
}

/// Sorts a LoRA file's keys the same way for both layouts: text-encoder keys are skipped (and
/// listed), `{base}{a}` / `{base}{b}` give the module bases, `{base}.alpha` is read later, and
/// any other key is an error. Returns (bases, skipped keys).
fn module_bases(
    names: &[String],
    [a, b]: [&str; 2],
) -> Result<(BTreeSet<String>, Vec<String>), LoraError> {
    let mut bases = BTreeSet::new();
    let mut skipped = Vec::new();
    let mut leftover = Vec::new();
    for k in names {
        if is_text_encoder(k) {
            skipped.push(k.clone());
        } else if let Some(m) = k.strip_suffix(a).or_else(|| k.strip_suffix(b)) {
            bases.insert(m.to_string());
        } else if !k.ends_with(".alpha") {
            leftover.push(k.clone());
        }
    }
    if !leftover.is_empty() {
        return Err(LoraError::Unrecognised(leftover.join(", ")));
    }
    Ok((bases, skipped))
}

fn peft_layers(st: &SafeTensors, names: &[String]) -> Result<Lora, LoraError> {
    let (modules, skipped) = module_bases(names, [".lora_A.weight", ".lora_B.weight"])?;
    let mut layers = BTreeMap::new();
    for m in modules {
        let (a_key, b_key) = (format!("{m}.lora_A.weight"), format!("{m}.lora_B.weight"));
        if st.tensor(&a_key).is_err() || st.tensor(&b_key).is_err() {
            return Err(LoraError::Unpaired(m));
        }
        let name = m.strip_prefix("base_model.model.").unwrap_or(&m);
        let name = name
            .strip_prefix("transformer.")
            .unwrap_or(name)
            .to_string();
        if !is_flux_module(&name) {
            return Err(LoraError::UnknownModule(name));
        }
        let l = layer(
            &name,
            matrix(st, &a_key)?,
            matrix(st, &b_key)?,
            alpha(st, &format!("{m}.alpha"))?,
        )?;
        layers.insert(name, l);
    }
    if layers.is_empty() {
        return Err(LoraError::Empty);
    }
    Ok(Lora {
        layout: Layout::Peft,
        layers,
        skipped,
    })
}

/// Module suffixes of a double-stream block (`transformer_blocks.N.`).
const DOUBLE: [&str; 14] = [
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
    "ff.net.0.proj",
    "ff.net.2",
    "ff_context.net.0.proj",
    "ff_context.net.2",
    "norm1.linear",
    "norm1_context.linear",
];
/// Module suffixes of a single-stream block (`single_transformer_blocks.N.`).
const SINGLE: [&str; 6] = [
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "proj_mlp",
    "proj_out",
    "norm.linear",
];
/// Linear layers outside the blocks.
const GLOBAL: [&str; 10] = [
    "x_embedder",
    "context_embedder",
    "time_text_embed.timestep_embedder.linear_1",
    "time_text_embed.timestep_embedder.linear_2",
    "time_text_embed.guidance_embedder.linear_1",
    "time_text_embed.guidance_embedder.linear_2",
    "time_text_embed.text_embedder.linear_1",
    "time_text_embed.text_embedder.linear_2",
    "norm_out.linear",
    "proj_out",
];

/// Splits `transformer_blocks.12.rest` into ("transformer_blocks", 12, "rest").
fn block_parts(name: &str, sep: char) -> Option<(&str, usize, &str)> {
    for prefix in ["single_transformer_blocks", "transformer_blocks"] {
        if let Some(rest) = name.strip_prefix(prefix).and_then(|r| r.strip_prefix(sep)) {
            let (n, rest) = rest.split_once(sep)?;
            return Some((prefix, n.parse().ok()?, rest));
        }
    }
    None
}

/// Whether `name` is a linear layer of FLUX's transformer (any block count).
pub fn is_flux_module(name: &str) -> bool {
    match block_parts(name, '.') {
        Some(("transformer_blocks", _, rest)) => DOUBLE.contains(&rest),
        Some((_, _, rest)) => SINGLE.contains(&rest),
        None => GLOBAL.contains(&name),
    }
}

/// A diffusers module path flattened by kohya (`.` → `_`) back to its dotted form.
fn unflatten(name: &str) -> Option<String> {
    let flat = |s: &str| s.replace('.', "_");
    match block_parts(name, '_') {
        Some((prefix, n, rest)) => {
            let table: &[&str] = if prefix == "transformer_blocks" {
                &DOUBLE
            } else {
                &SINGLE
            };
            table
                .iter()
                .find(|m| flat(m) == rest)
                .map(|m| format!("{prefix}.{n}.{m}"))
        }
        None => GLOBAL
            .iter()
            .find(|m| flat(m) == name)
            .map(|m| m.to_string()),
    }
}

/// How one kohya/BFL layer maps onto diffusers modules.
enum Target {
    /// One module.
    One(String),
    /// Fused projection: B's rows split over these modules (None = the remaining rows), A shared.
    Split(Vec<(String, Option<usize>)>),
    /// norm_out.linear: BFL orders the modulation (shift, scale), diffusers (scale, shift).
    SwapHalves(String),
}

/// BFL's original module names (as kohya's sd-scripts and ai-toolkit write them for FLUX).
fn bfl_target(name: &str, in_features: usize) -> Option<Target> {
    let one = |s: String| Some(Target::One(s));
    if let Some(rest) = name.strip_prefix("double_blocks_") {
        let (n, part) = rest.split_once('_')?;
        let n: usize = n.parse().ok()?;
        let b = format!("transformer_blocks.{n}");
        let qkv = |q: &str, k: &str, v: &str| {
            Some(Target::Split(vec![
                (format!("{b}.attn.{q}"), Some(1)),
                (format!("{b}.attn.{k}"), Some(1)),
                (format!("{b}.attn.{v}"), Some(1)),
            ]))
        };
        return match part {
            "img_attn_qkv" => qkv("to_q", "to_k", "to_v"),
            "txt_attn_qkv" => qkv("add_q_proj", "add_k_proj", "add_v_proj"),
            "img_attn_proj" => one(format!("{b}.attn.to_out.0")),
            "txt_attn_proj" => one(format!("{b}.attn.to_add_out")),
            "img_mlp_0" => one(format!("{b}.ff.net.0.proj")),
            "img_mlp_2" => one(format!("{b}.ff.net.2")),
            "txt_mlp_0" => one(format!("{b}.ff_context.net.0.proj")),
            "txt_mlp_2" => one(format!("{b}.ff_context.net.2")),
            "img_mod_lin" => one(format!("{b}.norm1.linear")),
            "txt_mod_lin" => one(format!("{b}.norm1_context.linear")),
            _ => None,
        };
    }
    if let Some(rest) = name.strip_prefix("single_blocks_") {
        let (n, part) = rest.split_once('_')?;
        let n: usize = n.parse().ok()?;
        let b = format!("single_transformer_blocks.{n}");
        return match part {
            // linear1 = [q; k; v; mlp]: q, k, v are `hidden` rows each (A's in_features), the MLP
            // the rest (4·hidden in FLUX; diffusers hard-codes 3072×3 + 12288).
            "linear1" => Some(Target::Split(vec![
                (format!("{b}.attn.to_q"), Some(in_features)),
                (format!("{b}.attn.to_k"), Some(in_features)),
                (format!("{b}.attn.to_v"), Some(in_features)),
                (format!("{b}.proj_mlp"), None),
            ])),
            "linear2" => one(format!("{b}.proj_out")),
            "modulation_lin" => one(format!("{b}.norm.linear")),
            _ => None,
        };
    }
    let global = match name {
        "img_in" => "x_embedder",
        "txt_in" => "context_embedder",
        "time_in_in_layer" => "time_text_embed.timestep_embedder.linear_1",
        "time_in_out_layer" => "time_text_embed.timestep_embedder.linear_2",
        "guidance_in_in_layer" => "time_text_embed.guidance_embedder.linear_1",
        "guidance_in_out_layer" => "time_text_embed.guidance_embedder.linear_2",
        "vector_in_in_layer" => "time_text_embed.text_embedder.linear_1",
        "vector_in_out_layer" => "time_text_embed.text_embedder.linear_2",
        "final_layer_linear" => "proj_out",
        "final_layer_adaLN_modulation_1" => {
            return Some(Target::SwapHalves("norm_out.linear".into()))
        }
        _ => return None,
    };
    one(global.into())
}

fn kohya_layers(st: &SafeTensors, names: &[String]) -> Result<Lora, LoraError> {
    let (bases, skipped) = module_bases(names, [".lora_down.weight", ".lora_up.weight"])?;
    let mut layers = BTreeMap::new();
    for base in bases {
        let (d_key, u_key) = (
            format!("{base}.lora_down.weight"),
            format!("{base}.lora_up.weight"),
        );
        if st.tensor(&d_key).is_err() || st.tensor(&u_key).is_err() {
            return Err(LoraError::Unpaired(base));
        }
        let (down, up) = (matrix(st, &d_key)?, matrix(st, &u_key)?);
        let alpha = alpha(st, &format!("{base}.alpha"))?;
        let name = base.strip_prefix("lora_unet_").unwrap_or(&base);
        let target = match unflatten(name) {
            Some(m) => Target::One(m),
            None => {
                bfl_target(name, down.cols).ok_or_else(|| LoraError::UnknownModule(base.clone()))?
            }
        };
        match target {
            Target::One(m) => {
                let l = layer(&m, down, up, alpha)?;
                layers.insert(m, l);
            }
            Target::SwapHalves(m) => {
                let half = up.rows / 2;
                let mut swapped = up.rows_range(half, up.rows - half);
                swapped.data.extend(up.rows_range(0, half).data);
                swapped.rows = up.rows;
                let l = layer(&m, down, swapped, alpha)?;
                layers.insert(m, l);
            }
            Target::Split(parts) => {
                let fixed: usize = parts.iter().filter_map(|p| p.1).sum();
                let unit = if parts.iter().all(|p| p.1 == Some(1)) {
                    // equal split (q/k/v of a double block)
                    (up.rows % parts.len() == 0).then_some(up.rows / parts.len())
                } else {
                    (up.rows > fixed).then_some(1)
                };
                let sizes: Option<Vec<usize>> = unit.map(|u| {
                    parts
                        .iter()
                        .map(|p| p.1.map_or(up.rows - fixed, |n| n * u))
                        .collect()
                });
                let sizes = sizes.ok_or_else(|| LoraError::Split {
                    key: base.clone(),
                    rows: up.rows,
                    parts: parts.iter().map(|p| p.1.unwrap_or(0)).collect(),
                })?;
                let mut start = 0;
                for ((m, _), n) in parts.into_iter().zip(sizes) {
                    let l = layer(&m, down.clone(), up.rows_range(start, n), alpha)?;
                    layers.insert(m, l);
                    start += n;
                }
            }
        }
    }
    if layers.is_empty() {
        return Err(LoraError::Empty);
    }
    Ok(Lora {
        layout: Layout::Kohya,
        layers,
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flux_module_names() {
        assert!(is_flux_module("transformer_blocks.18.attn.to_add_out"));
        assert!(is_flux_module("single_transformer_blocks.37.proj_mlp"));
        assert!(is_flux_module("time_text_embed.guidance_embedder.linear_2"));
        assert!(!is_flux_module(
            "single_transformer_blocks.0.attn.add_q_proj"
        ));
        assert!(!is_flux_module("transformer_blocks.x.attn.to_q"));
        assert_eq!(
            unflatten("transformer_blocks_3_attn_to_out_0").as_deref(),
            Some("transformer_blocks.3.attn.to_out.0")
        );
        assert_eq!(
            unflatten("single_transformer_blocks_10_norm_linear").as_deref(),
            Some("single_transformer_blocks.10.norm.linear")
        );
        assert_eq!(unflatten("double_blocks_0_img_attn_qkv"), None);
    }
}
