//! The denoising loop around the transformer, independent of how the transformer runs: start
//! latents (noise, or an encoded image noised to the schedule's first sigma), one velocity
//! evaluation and Euler step per scheduled step, a progress/cancellation hook before every
//! evaluation (so a cancel stops within one step), and the seeded Gaussian noise.

use super::schedule::{scale_noise, Schedule, Step};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Where a step stands, for progress logs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// 1-based number of the step about to run.
    pub number: usize,
    pub total: usize,
    pub step: Step,
}

/// The latents denoising starts from: the noise itself (txt2img), or the encoded image mixed with
/// it at the schedule's first sigma (img2img: σ·noise + (1−σ)·image).
pub fn initial_latents(
    schedule: &Schedule,
    noise: Vec<f32>,
    image_latents: Option<&[f32]>,
) -> Vec<f32> {
    match image_latents {
        None => noise,
        Some(image) => {
            let mut x = image.to_vec();
            scale_noise(&mut x, &noise, schedule.start_sigma());
            x
        }
    }
}

/// Runs every step of `schedule` on `latents` in place. Before each evaluation `before_step` is
/// called (check cancellation, log progress); its error stops the loop there. `velocity` gets the
/// current latents and the step (its `timestep` is what the transformer takes) and returns the
/// predicted velocity, the same size as the latents.
pub fn denoise<E>(
    schedule: &Schedule,
    latents: &mut [f32],
    mut velocity: impl FnMut(&[f32], &Step) -> Result<Vec<f32>, E>,
    mut before_step: impl FnMut(&Progress) -> Result<(), E>,
) -> Result<(), E> {
    let total = schedule.active_steps();
    for (i, step) in schedule.steps().enumerate() {
        before_step(&Progress {
            number: i + 1,
            total,
            step,
        })?;
        let v = velocity(latents, &step)?;
        step.euler(latents, &v);
    }
    Ok(())
}

/// The guidance-embedding input: the guidance value once per image of the batch.
pub fn guidance_input(guidance: f32, batch: usize) -> Vec<f32> {
    vec![guidance; batch]
}

/// The seed a request runs with: its own, or a fresh random one (reported, so it can be reused).
pub fn resolve_seed(seed: Option<u64>) -> u64 {
    seed.unwrap_or_else(|| rand::rng().random_range(0..1u64 << 32))
}

/// `len` standard-normal f32 values from `seed` (Box–Muller over StdRng's uniforms). The same seed
/// always gives the same noise; it is not torch's stream, so parity tests feed both sides the
/// same noise instead of the same seed.
pub fn gaussian_noise(seed: u64, len: usize) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(len + 1);
    while out.len() < len {
        // u1 in (0, 1] so ln(u1) is finite
        let u1: f64 = 1.0 - rng.random::<f64>();
        let u2: f64 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = std::f64::consts::TAU * u2;
        out.push((r * theta.cos()) as f32);
        out.push((r * theta.sin()) as f32);
    }
    out.truncate(len);
    out
}
