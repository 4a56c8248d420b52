//! The FLUX pipeline on a folder `cogrs weights build` compiled from a diffusers pipeline
//! (`pipeline.json`, see cog_weights::arch::flux_pipeline): four sessions built once, the LoRA slot
//! tensors bound once to the transformer's IoBinding (switching LoRAs rebinds only the scale
//! vector), then per image: noise → pack → denoise (transformer per step, cancellable) → unpack →
//! VAE decoder; img2img first encodes the image with the VAE encoder and noises it to the
//! schedule's start.

use super::denoise::{self, Progress};
use super::latents::{self, LatentShape, VaeScaling};
use super::schedule::{Schedule, ShiftConfig};
use super::tensors::{self, Elem};
use super::tokenize::{self, FixedLength};
use crate::engine::ort_env::{self, SessionOptions};
use cog_weights::arch::flux::config::TransformerEngine;
use cog_weights::arch::flux_pipeline::{PackedLora, PipelineDescription, DESCRIPTION_FILE};
use ort::session::{IoBinding, Session};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

mod step;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("{path}: {msg}")]
    Folder { path: PathBuf, msg: String },
    #[error(transparent)]
    Tokenize(#[from] tokenize::TokenizeError),
    #[error("{graph}: {msg}")]
    Run { graph: &'static str, msg: String },
    #[error("cancelled")]
    Cancelled,
}

fn run_err(graph: &'static str) -> impl Fn(String) -> PipelineError {
    move |msg| PipelineError::Run { graph, msg }
}

/// The text conditioning of one prompt.
#[derive(Debug, Clone)]
pub struct PromptEmbeds {
    /// CLIP pooled output, [pooled_dim].
    pub pooled: Vec<f32>,
    /// T5 last hidden state, [n_txt, joint_dim].
    pub embeds: Vec<f32>,
    pub n_txt: usize,
    pub truncated: bool,
}

/// The img2img start: the image and the VAE posterior's noise.
pub struct InitImage {
    /// (3, H, W) in [-1, 1] at the generation size (the same start for every image of the batch).
    pub chw: Vec<f32>,
    /// Standard normal over (batch, C, H/8, W/8): image b's sample is mean + std · its slice.
    pub posterior_noise: Vec<f32>,
}

/// A batch of images from one prompt, denoised together (one transformer call per step).
pub struct Job<'a> {
    pub batch: usize,
    pub prompt: &'a PromptEmbeds,
    pub width: u32,
    pub height: u32,
    pub schedule: &'a Schedule,
    pub guidance: f32,
    /// Standard normal noise over (batch, C, H/8, W/8).
    pub noise: Vec<f32>,
    pub init: Option<InitImage>,
}

/// Decoded images: (batch, 3, H, W) in [-1, 1] as the VAE returns them (not clamped).
pub struct Decoded {
    pub width: u32,
    pub height: u32,
    pub chw: Vec<f32>,
    /// Seconds per transformer step.
    pub step_seconds: Vec<f64>,
}

impl Decoded {
    /// Image `i` of the batch, (3, H, W).
    pub fn image(&self, i: usize) -> &[f32] {
        let n = 3 * (self.width * self.height) as usize;
        &self.chw[i * n..(i + 1) * n]
    }
}

struct Transformer {
    session: Session,
    /// LoRA slot tensors stay bound here for the pipeline's life; each run rebinds the rest.
    binding: IoBinding,
    scales: Option<Vec<f32>>,
}

pub struct FluxPipeline {
    dir: PathBuf,
    desc: PipelineDescription,
    engine: TransformerEngine,
    clip_tok: FixedLength,
    t5_tok: FixedLength,
    elem: [Elem; 5], // transformer, clip, t5, vae decoder, vae encoder
    clip: Mutex<Session>,
    t5: Mutex<Session>,
    vae_decoder: Mutex<Session>,
    vae_encoder: Mutex<Session>,
    transformer: Mutex<Transformer>,
    pub vae_scaling: VaeScaling,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, PipelineError> {
    let folder = |msg: String| PipelineError::Folder {
        path: path.to_path_buf(),
        msg,
    };
    let bytes = std::fs::read(path).map_err(|e| folder(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| folder(e.to_string()))
}

impl FluxPipeline {
    /// Whether `dir` holds a compiled FLUX pipeline.
    pub fn is_pipeline_dir(dir: &Path) -> bool {
        dir.join(DESCRIPTION_FILE).is_file()
    }

    /// Builds the four sessions and binds the LoRA slot tensors (all LoRAs off).
    pub fn load(dir: &Path, opts: &SessionOptions) -> Result<Self, PipelineError> {
        let desc: PipelineDescription = read_json(&dir.join(DESCRIPTION_FILE))?;
        if !desc.scheduler.use_dynamic_shifting {
            return Err(PipelineError::Folder {
                path: dir.join(DESCRIPTION_FILE),
                msg: "the scheduler has use_dynamic_shifting off; only FLUX.1-dev's dynamic \
                      shift is supported"
                    .into(),
            });
        }
        let engine: TransformerEngine = read_json(&dir.join(&desc.transformer))?;
        let folder = |msg: String| PipelineError::Folder {
            path: dir.to_path_buf(),
            msg,
        };
        let rt = ort_env::runtime().map_err(|e| folder(e.to_string()))?;
        let session = |graph: &str| -> Result<Session, PipelineError> {
            rt.session(&dir.join(graph), opts)
                .map(|(s, _)| s)
                .map_err(|e| folder(e.to_string()))
        };
        let mut elem = [Elem::F32; 5];
        let names = [
            &engine.dtype,
            &desc.clip.dtype,
            &desc.t5.dtype,
            &desc.vae_decoder.dtype,
            &desc.vae_encoder.dtype,
        ];
        for (e, name) in elem.iter_mut().zip(names) {
            *e = Elem::parse(name).map_err(&folder)?;
        }
        let tf_session = session(&engine.graph)?;
        let mut binding = tf_session
            .create_binding()
            .map_err(|e| folder(e.to_string()))?;
        if let (Some(pack), Some(_)) = (&desc.lora, &engine.lora) {
            step::bind_slots(&mut binding, &dir.join(&pack.file), elem[0]).map_err(&folder)?;
        }
        let tokens = &desc.tokenizers;
        let p = FluxPipeline {
            clip_tok: tokenize::clip(&dir.join(&tokens.clip_merges))?,
            t5_tok: tokenize::t5(&dir.join(&tokens.t5))?,
            clip: Mutex::new(session(&desc.clip.graph)?),
            t5: Mutex::new(session(&desc.t5.graph)?),
            vae_decoder: Mutex::new(session(&desc.vae_decoder.graph)?),
            vae_encoder: Mutex::new(session(&desc.vae_encoder.graph)?),
            transformer: Mutex::new(Transformer {
                session: tf_session,
                binding,
                scales: None,
            }),
            vae_scaling: VaeScaling {
                scaling_factor: desc.vae.scaling_factor as f32,
                shift_factor: desc.vae.shift_factor as f32,
            },
            dir: dir.to_path_buf(),
            elem,
            desc,
            engine,
        };
        let off = vec![0.0; p.loras().len()];
        p.set_lora_scales(&off)?;
        Ok(p)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn description(&self) -> &PipelineDescription {
        &self.desc
    }

    /// The LoRAs packed into the folder, in slot order (empty without LoRAs).
    pub fn loras(&self) -> &[PackedLora] {
        self.desc.lora.as_ref().map_or(&[], |l| &l.loras)
    }

    /// The folder's scheduler shift parameters.
    pub fn shift_config(&self) -> ShiftConfig {
        let s = &self.desc.scheduler;
        ShiftConfig {
            base_image_seq_len: s.base_image_seq_len,
            max_image_seq_len: s.max_image_seq_len,
            base_shift: s.base_shift,
            max_shift: s.max_shift,
        }
    }

    /// `schedule` (validated with FLUX.1-dev's scheduler values) recomputed with this folder's,
    /// entered at the same step.
    pub fn reschedule(&self, schedule: &Schedule, image_seq_len: usize) -> Schedule {
        let cfg = self.shift_config();
        if cfg == ShiftConfig::default() {
            return schedule.clone();
        }
        let mut s = Schedule::flux(schedule.timesteps.len(), image_seq_len, &cfg)
            .expect("a validated schedule has steps");
        s.begin = schedule.begin;
        s
    }

    pub fn latent_channels(&self) -> usize {
        self.desc.vae.latent_channels
    }

    /// Sets each packed LoRA's scale (0 = off): binds a new scale vector, nothing else. Returns the
    /// time it took (zero when the scales did not change).
    pub fn set_lora_scales(&self, per_lora: &[f32]) -> Result<Duration, PipelineError> {
        let t0 = Instant::now();
        let (Some(pack), Some(io)) = (&self.desc.lora, &self.engine.lora) else {
            return Ok(Duration::ZERO);
        };
        let err = run_err("transformer");
        if per_lora.len() != pack.loras.len() {
            return Err(err(format!(
                "{} LoRA scales for {} LoRAs",
                per_lora.len(),
                pack.loras.len()
            )));
        }
        let mut s = vec![0.0f32; pack.rank];
        for (l, v) in pack.loras.iter().zip(per_lora) {
            s[l.segment[0]..l.segment[1]].fill(*v);
        }
        let mut tf = self.transformer.lock().expect("transformer lock");
        if tf.scales.as_ref() == Some(&s) {
            return Ok(Duration::ZERO);
        }
        let t = tensors::tensor(self.elem[0], &[pack.rank], &s).map_err(&err)?;
        tf.binding
            .bind_input(io.scales.as_str(), &t)
            .map_err(|e| err(e.to_string()))?;
        tf.scales = Some(s);
        Ok(t0.elapsed())
    }

    /// Token ids as the text encoders can take them: a test model's vocabulary may be smaller
    /// than the real tokenizer's, and ids past it are clamped to its last entry (real FLUX
    /// encoders hold every id, so this never changes them).
    fn fit_ids(ids: &[u32], vocab: usize) -> Vec<u32> {
        let top = vocab.saturating_sub(1) as u32;
        ids.iter()
            .map(|&i| if vocab > 0 { i.min(top) } else { i })
            .collect()
    }

    /// Tokenizes `prompt` and runs CLIP (pooled) and T5.
    pub fn encode_prompt(&self, prompt: &str) -> Result<PromptEmbeds, PipelineError> {
        let c = self.clip_tok.encode(prompt)?;
        let t = self.t5_tok.encode(prompt)?;
        let clip_ids = Self::fit_ids(&c.ids, self.desc.clip.vocab_size);
        let t5_ids = Self::fit_ids(&t.ids, self.desc.t5.vocab_size);
        let pooled = run_one(&self.clip, "clip", "input_ids", &clip_ids, "pooled_output")?;
        let embeds = run_one(&self.t5, "t5", "input_ids", &t5_ids, "last_hidden_state")?;
        Ok(PromptEmbeds {
            pooled: pooled.1,
            n_txt: t5_ids.len(),
            embeds: embeds.1,
            truncated: c.truncated || t.truncated,
        })
    }

    /// Makes a batch of images. `before_step` runs before every transformer step (progress,
    /// cancel).
    pub fn generate(
        &self,
        job: Job,
        before_step: &mut dyn FnMut(&Progress) -> Result<(), PipelineError>,
    ) -> Result<Decoded, PipelineError> {
        let shape = LatentShape::for_image(
            job.batch,
            self.latent_channels(),
            job.width as usize,
            job.height as usize,
        );
        if job.noise.len() != shape.len() {
            return Err(run_err("noise")(format!(
                "{} values for latents {shape:?}",
                job.noise.len()
            )));
        }
        let image_latents = match &job.init {
            None => None,
            Some(init) => Some(latents::pack(&self.encode_image(init, shape)?, shape)),
        };
        let noise = latents::pack(&job.noise, shape);
        let mut x = denoise::initial_latents(job.schedule, noise, image_latents.as_deref());
        let mut step_seconds = Vec::new();
        // Held for the whole loop: the conditioning bound here must stay until the last step.
        let mut tf = self.transformer.lock().expect("transformer lock");
        self.bind_conditioning(&mut tf, &job, shape)?;
        denoise::denoise(
            job.schedule,
            &mut x,
            |lat, step| {
                let t0 = Instant::now();
                let v = self.velocity(&mut tf, shape, lat, step.timestep);
                step_seconds.push(t0.elapsed().as_secs_f64());
                v
            },
            |p| before_step(p),
        )?;
        drop(tf);
        let mut z = latents::unpack(&x, shape);
        self.vae_scaling.to_vae(&mut z);
        let dims = [job.batch, shape.channels, shape.height, shape.width];
        let input = tensors::tensor(self.elem[3], &dims, &z).map_err(run_err("vae_decoder"))?;
        let mut s = self.vae_decoder.lock().expect("vae lock");
        let out = s
            .run(vec![("latent", input)])
            .map_err(|e| run_err("vae_decoder")(e.to_string()))?;
        let (_, chw) = tensors::to_f32(output(&out, "image", "vae_decoder")?)
            .map_err(run_err("vae_decoder"))?;
        Ok(Decoded {
            width: job.width,
            height: job.height,
            chw,
            step_seconds,
        })
    }

    /// VAE encoder (once) → a posterior sample per image → (z − shift) · scaling, unpacked.
    fn encode_image(
        &self,
        init: &InitImage,
        shape: LatentShape,
    ) -> Result<Vec<f32>, PipelineError> {
        let err = run_err("vae_encoder");
        let (h, w) = (shape.height * 8, shape.width * 8);
        let input = tensors::tensor(self.elem[4], &[1, 3, h, w], &init.chw).map_err(&err)?;
        let mut s = self.vae_encoder.lock().expect("vae lock");
        let out = s
            .run(vec![("image", input)])
            .map_err(|e| err(e.to_string()))?;
        let (_, mean) =
            tensors::to_f32(output(&out, "latent_mean", "vae_encoder")?).map_err(&err)?;
        let (_, logvar) =
            tensors::to_f32(output(&out, "latent_logvar", "vae_encoder")?).map_err(&err)?;
        let per_image = shape.len() / shape.batch;
        if mean.len() != per_image || init.posterior_noise.len() != shape.len() {
            return Err(err(format!(
                "latent of {} values for {shape:?}",
                mean.len()
            )));
        }
        let mut z: Vec<f32> = init
            .posterior_noise
            .chunks_exact(per_image)
            .flat_map(|noise| {
                mean.iter()
                    .zip(&logvar)
                    .zip(noise)
                    .map(|((m, lv), n)| m + (0.5 * lv).exp() * n)
            })
            .collect();
        self.vae_scaling.from_vae(&mut z);
        Ok(z)
    }
}

/// Runs a one-input graph on token ids; returns its output `output` (shape, f32 data).
fn run_one(
    session: &Mutex<Session>,
    graph: &'static str,
    input: &str,
    ids: &[u32],
    output: &str,
) -> Result<(Vec<i64>, Vec<f32>), PipelineError> {
    let err = run_err(graph);
    let t = tensors::ids_tensor(ids).map_err(&err)?;
    let mut s = session.lock().expect("session lock");
    let out = s
        .run(vec![(input.to_string(), t)])
        .map_err(|e| err(e.to_string()))?;
    tensors::to_f32(self::output(&out, output, graph)?).map_err(err)
}

fn output<'a>(
    out: &'a ort::session::SessionOutputs,
    name: &str,
    graph: &'static str,
) -> Result<&'a ort::value::DynValue, PipelineError> {
    out.get(name)
        .ok_or_else(|| run_err(graph)(format!("no output {name:?}")))
}
