//! FLUX.1: the diffusers `FluxTransformer2DModel` compiled to `transformer.onnx`, with optional
//! LoRA slots for hot-swapping LoRAs by binding tensors; and the LoRA file conversion and slot
//! packing the engine uses to fill them.
//!
//! ```text
//! x_embedder(hidden_states), context_embedder(encoder_hidden_states), temb (embed.rs),
//! RoPE tables from [txt_ids; img_ids] (rope.rs)
//! N double blocks (image and text streams, joint attention)      blocks::double
//! [text; image] joined, M single blocks (parallel attention+MLP)  blocks::single
//! image tokens → norm_out (AdaLayerNormContinuous) → proj_out → sample
//! ```
//! Math follows diffusers 0.42.1 `transformer_flux.py`; weights keep diffusers' names, so the
//! LoRA slot of module `m` sits on the linear whose weight is `m.weight`.
//!
//! Graph contract (names in `transformer.json`, see [`config::TransformerIo`]; `T` = the compute
//! dtype; dims `batch`, `n_img`, `n_txt`, `lora_rank` symbolic):
//! - `hidden_states` T [batch, n_img, in_channels]; `encoder_hidden_states` T [batch, n_txt,
//!   joint_attention_dim]; `pooled_projections` T [batch, pooled_projection_dim];
//! - `timestep` f32 [batch] = sigma (the pipeline's t/1000; ×1000 in the graph, in T as diffusers
//!   does); `guidance` f32 [batch] (only with `guidance_embeds`; ×1000 in the graph);
//! - `img_ids` f32 [n_img, 3], `txt_ids` f32 [n_txt, 3]: RoPE is computed from them in the graph;
//! - with LoRA slots: `lora_scales` T [lora_rank], and per targeted module `lora.<module>.a_t`
//!   T [in, lora_rank] (Aᵀ) and `lora.<module>.b_t` T [lora_rank, out] (Bᵀ, alpha/rank folded);
//!   [`slots::Slots::bindings`] produces all of them from packed LoRA files;
//! - output `sample` T [batch, n_img, out_channels]: the velocity.

pub mod attention;
mod blocks;
pub mod config;
mod ctx;
pub mod embed;
mod linear;
pub mod lora;
pub mod rope;
pub mod slots;

pub use attention::AttentionKind;
pub use config::{FluxConfig, LoraSlotSpec, TransformerEngine};
pub use rope::RopeKind;

use crate::arch::Dtype;
use crate::checkpoint::safetensors::SafetensorsSource;
use crate::checkpoint::TensorSource;
use crate::format::{FileEntry, FORMAT_VERSION};
use crate::onnx::{Attr, DataType, Dim, GraphBuilder, MS_DOMAIN, MS_OPSET};
use crate::quant::{Scheme, TensorReport};
use crate::Error;
use blocks::Shared;
use config::{LoraSlotsIo, TransformerIo, LORA_SCALES};
use ctx::Ctx;
use std::collections::BTreeMap;
use std::path::Path;

pub const GRAPH_FILE: &str = "transformer.onnx";
pub const DATA_FILE: &str = "transformer.onnx.data";
pub const ENGINE_FILE: &str = "transformer.json";
pub const REPORT_FILE: &str = "transformer_quantization_report.json";

#[derive(Debug, Clone, PartialEq)]
pub struct TransformerOptions {
    pub dtype: Dtype,
    /// Attention and MLP linears of every block.
    pub blocks: Scheme,
    /// The blocks' adaLN modulation linears (`norm1.linear`, `norm1_context.linear`, `norm.linear`).
    pub modulation: Scheme,
    /// LoRA slots; `None`: no LoRA inputs at all.
    pub lora: Option<LoraSlotSpec>,
    pub attention: AttentionKind,
    pub rope: RopeKind,
    /// Emit linears that read the same input (q/k/v of each stream; a single block's q/k/v and
    /// MLP input projection) as one product over their concatenated rows, split per module.
    pub fuse_projections: bool,
    /// The timestep/guidance projection's 128 frequencies; `None`: exp(−ln(10000)·j/128)
    /// correctly rounded to float32. torch's vectorised `exp` rounds a few of them 1 ulp
    /// differently, and at arguments of 1000·t (up to 1000) and 1000·guidance that shows in the
    /// output; parity tests pass torch's table to compare everything else at float32 rounding.
    pub time_frequencies: Option<Vec<f32>>,
}

impl TransformerOptions {
    pub fn new(dtype: Dtype) -> Self {
        TransformerOptions {
            dtype,
            blocks: Scheme::None,
            modulation: Scheme::None,
            lora: None,
            attention: AttentionKind::Plain,
            rope: RopeKind::Exact,
            fuse_projections: true,
            time_frequencies: None,
        }
    }
}

/// What [`build_transformer`] wrote.
#[derive(Debug, Clone)]
pub struct TransformerBuild {
    pub engine: TransformerEngine,
    pub reports: Vec<TensorReport>,
    /// Every file written into the output folder, with digests (for the manifest).
    pub files: BTreeMap<String, FileEntry>,
}

/// Compiles a diffusers `transformer/` folder (config.json + safetensors) into `out_dir` (which
/// must exist): `transformer.onnx`, `transformer.onnx.data`, `transformer.json`, and, when
/// anything is quantised, `transformer_quantization_report.json`.
pub fn build_transformer(
    transformer_dir: &Path,
    out_dir: &Path,
    opts: &TransformerOptions,
) -> Result<TransformerBuild, Error> {
    let cfg = FluxConfig::load(&transformer_dir.join("config.json"))?;
    let src = open_diffusers_dir(transformer_dir)?;
    if let Some(spec) = &opts.lora {
        for m in &spec.modules {
            if !lora::is_flux_module(m) || !src.contains(&format!("{m}.weight")) {
                return Err(Error::Config {
                    path: transformer_dir.to_path_buf(),
                    msg: format!(
                        "LoRA slot module {m:?} is not a linear layer of this transformer"
                    ),
                });
            }
        }
    }
    let mut g = GraphBuilder::new("flux_transformer", &out_dir.join(DATA_FILE), DATA_FILE)?;
    let (engine, reports) = emit(&cfg, &src, &mut g, opts)?;
    let data = g.finish(
        &out_dir.join(GRAPH_FILE),
        &[("", opts.attention.opset()), (MS_DOMAIN, MS_OPSET)],
    )?;
    write_json(&out_dir.join(ENGINE_FILE), &engine)?;
    let mut files = BTreeMap::new();
    files.insert(DATA_FILE.to_string(), data);
    let mut written = vec![GRAPH_FILE, ENGINE_FILE];
    if !reports.is_empty() {
        write_json(&out_dir.join(REPORT_FILE), &reports)?;
        written.push(REPORT_FILE);
    }
    for f in written {
        files.insert(f.to_string(), crate::build::hash_file(&out_dir.join(f))?);
    }
    Ok(TransformerBuild {
        engine,
        reports,
        files,
    })
}

/// diffusers names its weights `diffusion_pytorch_model.safetensors` (sharded: with a
/// `.index.json`); `model.safetensors` is accepted too.
fn open_diffusers_dir(dir: &Path) -> Result<SafetensorsSource, Error> {
    const STEM: &str = "diffusion_pytorch_model.safetensors";
    let index = dir.join(format!("{STEM}.index.json"));
    if index.exists() {
        #[derive(serde::Deserialize)]
        struct Index {
            weight_map: BTreeMap<String, String>,
        }
        let idx: Index = crate::checkpoint::read_json(&index)?;
        let names: std::collections::BTreeSet<&String> = idx.weight_map.values().collect();
        let files: Vec<_> = names.into_iter().map(|n| dir.join(n)).collect();
        return SafetensorsSource::open_files(&files);
    }
    if dir.join(STEM).exists() {
        return SafetensorsSource::open_files(&[dir.join(STEM)]);
    }
    SafetensorsSource::open_dir(dir)
}

fn write_json<T: serde::Serialize>(path: &Path, v: &T) -> Result<(), Error> {
    let mut s = serde_json::to_string_pretty(v).map_err(|e| Error::Internal(e.to_string()))?;
    s.push('\n');
    std::fs::write(path, s).map_err(|e| Error::io(path, e))
}

/// Emits the graph into `g`.
pub fn emit(
    cfg: &FluxConfig,
    src: &dyn TensorSource,
    g: &mut GraphBuilder,
    opts: &TransformerOptions,
) -> Result<(TransformerEngine, Vec<TensorReport>), Error> {
    let dt = opts.dtype.onnx();
    let (b, n_img, n_txt) = ("batch", "n_img", "n_txt");
    let io = TransformerIo {
        hidden_states: "hidden_states".into(),
        encoder_hidden_states: "encoder_hidden_states".into(),
        pooled_projections: "pooled_projections".into(),
        timestep: "timestep".into(),
        guidance: cfg.guidance_embeds.then(|| "guidance".into()),
        img_ids: "img_ids".into(),
        txt_ids: "txt_ids".into(),
        sample: "sample".into(),
    };
    let dims = |d: &[Dim]| d.to_vec();
    g.input(
        &io.hidden_states,
        dt,
        &dims(&[b.into(), n_img.into(), cfg.in_channels.into()]),
    );
    g.input(
        &io.encoder_hidden_states,
        dt,
        &dims(&[b.into(), n_txt.into(), cfg.joint_attention_dim.into()]),
    );
    g.input(
        &io.pooled_projections,
        dt,
        &dims(&[b.into(), cfg.pooled_projection_dim.into()]),
    );
    g.input(&io.timestep, DataType::Float, &[b.into()]);
    if let Some(gd) = &io.guidance {
        g.input(gd, DataType::Float, &[b.into()]);
    }
    g.input(&io.img_ids, DataType::Float, &[n_img.into(), 3i64.into()]);
    g.input(&io.txt_ids, DataType::Float, &[n_txt.into(), 3i64.into()]);
    g.output(
        &io.sample,
        dt,
        &dims(&[b.into(), n_img.into(), cfg.out_channels().into()]),
    );

    let mut cx = Ctx::new(g, src, opts.dtype, opts.lora.as_ref());
    let temb = embed::conditioning(
        &mut cx,
        opts.time_frequencies.as_deref(),
        &io.timestep,
        io.guidance.as_deref(),
        &io.pooled_projections,
    )?;
    let silu_temb = cx.silu("/temb/act", &temb);
    let rope = rope::tables(
        &mut cx,
        &io.txt_ids,
        &io.img_ids,
        &cfg.axes_dims_rope,
        opts.rope,
    )?;
    let n_txt_len = cx.op(
        "/n_txt/Shape",
        "Shape",
        &[&io.encoder_hidden_states],
        &[("start", Attr::Int(1)), ("end", Attr::Int(2))],
    );
    let mut img = cx.linear("x_embedder", &io.hidden_states, Scheme::None)?;
    let mut txt = cx.linear("context_embedder", &io.encoder_hidden_states, Scheme::None)?;

    let sh = Shared {
        cfg,
        silu_temb: &silu_temb,
        rope: &rope,
        n_txt: &n_txt_len,
        attention: opts.attention,
        linear: opts.blocks,
        modulation: opts.modulation,
        fuse: opts.fuse_projections,
    };
    for i in 0..cfg.num_layers {
        (img, txt) = blocks::double(&mut cx, &sh, i, &img, &txt)?;
    }
    if cfg.num_single_layers > 0 {
        let mut x = cx.op(
            "/single/Concat",
            "Concat",
            &[&txt, &img],
            &[("axis", Attr::Int(1))],
        );
        for i in 0..cfg.num_single_layers {
            x = blocks::single(&mut cx, &sh, i, &x)?;
        }
        img = blocks::seq_slice(&mut cx, "/single/img", &x, Some(&n_txt_len), None);
    }

    // norm_out: AdaLayerNormContinuous, chunks (scale, shift).
    let e = cx.linear("norm_out.linear", &silu_temb, Scheme::None)?;
    let c = cx.chunks("/norm_out", &e, 2);
    let n = cx.modulate("/norm_out", &img, cfg.hidden(), &c[1], &c[0])?;
    let out = cx.linear("proj_out", &n, Scheme::None)?;
    cx.g.identity_output("/sample/Identity", &out, &io.sample);

    if let Some(spec) = &opts.lora {
        if cx.lora_inputs.len() != spec.modules.len() {
            return Err(Error::Internal(format!(
                "{} LoRA slot modules requested, {} emitted",
                spec.modules.len(),
                cx.lora_inputs.len()
            )));
        }
    }
    let lora = opts.lora.as_ref().map(|spec| LoraSlotsIo {
        rank: spec.rank,
        scales: LORA_SCALES.into(),
        modules: std::mem::take(&mut cx.lora_inputs),
    });
    let mut quantization = BTreeMap::new();
    quantization.insert("blocks".to_string(), opts.blocks.label());
    quantization.insert("modulation".to_string(), opts.modulation.label());
    let engine = TransformerEngine {
        format_version: FORMAT_VERSION,
        graph: GRAPH_FILE.into(),
        dtype: opts.dtype.element_name().into(),
        config: cfg.clone(),
        io,
        lora,
        attention: opts.attention.name().into(),
        rope: opts.rope.name().into(),
        quantization,
    };
    Ok((engine, cx.reports))
}
