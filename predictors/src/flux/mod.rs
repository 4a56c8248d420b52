//! `flux-txt2img` and `flux-img2img`: FLUX.1 image generation on a folder compiled by
//! `cogrs weights build <diffusers FLUX pipeline>` (there is no default model: setup needs
//! `--weights`/`COG_WEIGHTS`). Trigger words in the prompt switch the LoRAs packed at build time on
//! (by the trigger-set names they were packed under); switching only rebinds a scale vector.

mod img2img;
mod txt2img;

pub use img2img::FluxImg2Img;
pub use txt2img::FluxTxt2Img;

use crate::engine::diffusion::denoise;
use crate::engine::diffusion::image_io;
use crate::engine::diffusion::inputs::Generation;
use crate::engine::diffusion::latents::LatentShape;
use crate::engine::diffusion::pipeline::{FluxPipeline, InitImage, Job, PipelineError};
use crate::engine::diffusion::triggers;
use crate::engine::ort_env::SessionOptions;
use crate::weights_check::Checked;
use cog_runtime::{Path, PredictContext, PredictError, SetupContext, SetupError};
use std::sync::Mutex;
use std::time::Instant;

/// The loaded pipeline, shared by one predictor's predictions (one at a time: the LoRA scales
/// are pipeline state).
pub struct Loaded {
    pipeline: Mutex<FluxPipeline>,
}

/// Resolves `--weights`/`COG_WEIGHTS`, verifies the folder against its manifest and loads it.
pub fn setup(ctx: &SetupContext, name: &str) -> Result<Loaded, SetupError> {
    let Some(w) = ctx.weights.as_deref() else {
        return Err(SetupError::new(format!(
            "{name} needs a compiled FLUX pipeline and there is no default FLUX model: pass \
             --weights DIR or set COG_WEIGHTS (build one with `cogrs weights build \
             <diffusers FLUX folder> -o DIR [--lora NAME=FILE]...`)"
        )));
    };
    let dir =
        crate::weights_source::resolve(w, &crate::weights_source::default_cache_dir(), &|line| {
            ctx.log(line)
        })
        .map_err(SetupError::new)?;
    if !FluxPipeline::is_pipeline_dir(&dir) {
        return Err(SetupError::new(format!(
            "{} is not a compiled FLUX pipeline (no pipeline.json); build one with `cogrs weights \
             build <diffusers FLUX folder> -o DIR`",
            dir.display()
        )));
    }
    match crate::weights_check::check(&dir).map_err(SetupError::new)? {
        Checked::Hashed => ctx.log("weights verified against manifest.json (sha256 of every file)"),
        Checked::UnchangedSinceHashed => {
            ctx.log("weights unchanged since they were verified against manifest.json")
        }
        Checked::NoManifest => ctx.log("weights folder has no manifest.json: not verified"),
    }
    let t0 = Instant::now();
    let p = FluxPipeline::load(&dir, &SessionOptions::default()).map_err(SetupError::new)?;
    let loras: Vec<&str> = p.loras().iter().map(|l| l.name.as_str()).collect();
    ctx.log(format!(
        "loaded FLUX pipeline {} in {:.1}s; LoRAs: {}",
        dir.display(),
        t0.elapsed().as_secs_f64(),
        if loras.is_empty() {
            "none".to_string()
        } else {
            loras.join(", ")
        }
    ));
    Ok(Loaded {
        pipeline: Mutex::new(p),
    })
}

fn failed(e: PipelineError) -> PredictError {
    match e {
        PipelineError::Cancelled => PredictError::Canceled,
        e => PredictError::failed(e),
    }
}

/// Noise for image `i` of a request (`len` values): its own stream per image; img2img's VAE
/// posterior sample uses a second stream (`stream` 1).
fn noise(seed: u64, i: usize, len: usize, stream: u64) -> Vec<f32> {
    denoise::gaussian_noise(
        seed.wrapping_add(i as u64)
            .wrapping_add(stream.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        len,
    )
}

/// Runs a generation (with an init image for img2img) and writes the images.
pub fn run(
    loaded: &Loaded,
    gen: &Generation,
    init_image: Option<&std::path::Path>,
    ctx: &PredictContext,
) -> Result<Vec<Path>, PredictError> {
    let p = loaded.pipeline.lock().expect("pipeline lock");
    let t0 = Instant::now();
    // The LoRAs this prompt activates, by the names they were packed under.
    let per_lora: Vec<f32> = p
        .loras()
        .iter()
        .map(|l| {
            let on = gen.styles.iter().any(|s| s.name() == l.name);
            if on {
                gen.lora_scale
            } else {
                0.0
            }
        })
        .collect();
    for s in &gen.styles {
        if !p.loras().iter().any(|l| l.name == s.name()) {
            ctx.log(format!(
                "trigger for the {} LoRA, but this folder has no LoRA packed under that name",
                s.name()
            ));
        }
    }
    ctx.log(triggers::describe(&gen.styles, gen.lora_scale));
    let switch = p.set_lora_scales(&per_lora).map_err(failed)?;
    ctx.log(format!(
        "LoRA scales set in {:.3} ms",
        switch.as_secs_f64() * 1e3
    ));
    ctx.metric("lora_switch_ms", switch.as_secs_f64() * 1e3);
    ctx.metric(
        "active_loras",
        gen.styles.iter().map(|s| s.name()).collect::<Vec<_>>(),
    );

    let embeds = p.encode_prompt(&gen.prompt).map_err(failed)?;
    if embeds.truncated {
        ctx.log("the prompt was cut to the text encoders' length (77 CLIP / 512 T5 tokens)");
    }
    let seed = denoise::resolve_seed(gen.seed);
    ctx.metric("seed", seed);
    let shape = LatentShape::for_image(
        1,
        p.latent_channels(),
        gen.width as usize,
        gen.height as usize,
    );
    let init_chw = match init_image {
        Some(path) => Some(
            image_io::load_for_vae(path, gen.width, gen.height)
                .map_err(|e| PredictError::failed(format!("image: {e}")))?,
        ),
        None => None,
    };
    let schedule = p.reschedule(&gen.schedule, shape.seq_len());
    let n = gen.num_outputs;
    let stream = |k: u64| -> Vec<f32> {
        (0..n)
            .flat_map(|i| noise(seed, i, shape.len(), k))
            .collect()
    };
    let job = Job {
        batch: n,
        prompt: &embeds,
        width: gen.width,
        height: gen.height,
        schedule: &schedule,
        guidance: gen.guidance,
        noise: stream(0),
        init: init_chw.map(|chw| InitImage {
            chw,
            posterior_noise: stream(1),
        }),
    };
    let img = p
        .generate(job, &mut |pr| {
            if ctx.is_cancelled() {
                return Err(PipelineError::Cancelled);
            }
            ctx.log(format!(
                "step {}/{} (t = {:.3}, {n} image(s))",
                pr.number, pr.total, pr.step.timestep
            ));
            Ok(())
        })
        .map_err(failed)?;
    ctx.check_cancelled()?;
    let step_seconds = img.step_seconds.clone();
    let mut outputs = Vec::new();
    for i in 0..n {
        let rgb = image_io::to_rgb8(img.image(i), img.width, img.height);
        let bytes = image_io::encode(
            &rgb,
            img.width,
            img.height,
            gen.output_format,
            gen.output_quality,
        )
        .map_err(PredictError::failed)?;
        let path = ctx
            .scratch_dir()
            .join(format!("out-{i}.{}", gen.output_format.extension()));
        std::fs::write(&path, bytes)
            .map_err(|e| PredictError::failed(format!("writing {}: {e}", path.display())))?;
        outputs.push(Path::new(path));
    }
    let mean = step_seconds.iter().sum::<f64>() / step_seconds.len().max(1) as f64;
    ctx.metric("seconds_per_step", mean);
    ctx.metric("step_seconds", step_seconds);
    ctx.metric("predict_time_s", t0.elapsed().as_secs_f64());
    ctx.log(format!(
        "{} image(s) {}×{}, {} steps at {:.3} s/step, seed {seed}",
        outputs.len(),
        gen.width,
        gen.height,
        gen.schedule.active_steps(),
        mean
    ));
    Ok(outputs)
}
