//! FlowMatch Euler schedule with FLUX.1-dev's resolution-dependent shift, as diffusers'
//! `FlowMatchEulerDiscreteScheduler` (use_dynamic_shifting) computes it for `FluxPipeline` and
//! `FluxImg2ImgPipeline`. Arithmetic follows diffusers' dtypes (numpy f64 for the linspace and μ,
//! f32 for the shifted sigmas and the step) so the values agree to the last bit, not just closely.

/// FLUX.1-dev's scheduler config (scheduler/scheduler_config.json).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShiftConfig {
    pub base_image_seq_len: usize,
    pub max_image_seq_len: usize,
    pub base_shift: f64,
    pub max_shift: f64,
}

impl Default for ShiftConfig {
    fn default() -> Self {
        ShiftConfig {
            base_image_seq_len: 256,
            max_image_seq_len: 4096,
            base_shift: 0.5,
            max_shift: 1.15,
        }
    }
}

impl ShiftConfig {
    /// μ for an image of `image_seq_len` packed latent tokens: the straight line through
    /// (base_seq_len, base_shift) and (max_seq_len, max_shift), extrapolated outside that range
    /// (diffusers' `calculate_shift`, in Python floats).
    pub fn mu(&self, image_seq_len: usize) -> f64 {
        let m = (self.max_shift - self.base_shift)
            / (self.max_image_seq_len as f64 - self.base_image_seq_len as f64);
        let b = self.base_shift - m * self.base_image_seq_len as f64;
        image_seq_len as f64 * m + b
    }
}

/// Scheduler timesteps are sigmas × this (the transformer gets timestep / 1000 again).
pub const NUM_TRAIN_TIMESTEPS: f32 = 1000.0;

/// A denoising schedule: `sigmas` has one more entry than `timesteps` (the final 0).
/// `begin` is the first step actually run (0 for txt2img; img2img skips the noisiest steps).
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub sigmas: Vec<f32>,
    pub timesteps: Vec<f32>,
    pub begin: usize,
    pub mu: f64,
}

/// Why a schedule cannot be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScheduleError {
    #[error("num_inference_steps must be at least 1")]
    NoSteps,
    #[error("strength must be within 0..1, got {0}")]
    Strength(f64),
    #[error(
        "strength {strength} leaves no denoising step out of {steps}: raise strength or num_inference_steps"
    )]
    NothingToDenoise { strength: f64, steps: usize },
}

/// numpy.linspace(1.0, 1/n, n) in f64 (start + i·step, last element exactly `stop`), then f32.
fn base_sigmas(n: usize) -> Vec<f32> {
    let stop = 1.0 / n as f64;
    if n == 1 {
        return vec![1.0];
    }
    let step = (stop - 1.0) / (n - 1) as f64;
    (0..n)
        .map(|i| {
            if i == n - 1 {
                stop as f32
            } else {
                (i as f64 * step + 1.0) as f32
            }
        })
        .collect()
}

/// exp(μ) / (exp(μ) + (1/σ − 1)): numpy evaluates it in f32 (the σ array's dtype) with exp(μ)
/// rounded to f32 first.
fn time_shift(mu: f64, sigma: f32) -> f32 {
    let e = mu.exp() as f32;
    e / (e + (1.0 / sigma - 1.0))
}

impl Schedule {
    /// txt2img: `steps` shifted sigmas for an image of `image_seq_len` packed tokens, then 0.
    pub fn flux(
        steps: usize,
        image_seq_len: usize,
        cfg: &ShiftConfig,
    ) -> Result<Self, ScheduleError> {
        if steps == 0 {
            return Err(ScheduleError::NoSteps);
        }
        let mu = cfg.mu(image_seq_len);
        let mut sigmas: Vec<f32> = base_sigmas(steps)
            .into_iter()
            .map(|s| time_shift(mu, s))
            .collect();
        let timesteps = sigmas.iter().map(|s| s * NUM_TRAIN_TIMESTEPS).collect();
        sigmas.push(0.0);
        Ok(Schedule {
            sigmas,
            timesteps,
            begin: 0,
            mu,
        })
    }

    /// img2img: the same schedule, entered at the step `strength` selects
    /// (FluxImg2ImgPipeline.get_timesteps: t_start = int(max(n − min(n·strength, n), 0)), in f64).
    pub fn img2img(
        steps: usize,
        image_seq_len: usize,
        strength: f64,
        cfg: &ShiftConfig,
    ) -> Result<Self, ScheduleError> {
        if !(0.0..=1.0).contains(&strength) {
            return Err(ScheduleError::Strength(strength));
        }
        let mut s = Self::flux(steps, image_seq_len, cfg)?;
        let n = steps as f64;
        let init = (n * strength).min(n);
        s.begin = (n - init).max(0.0) as usize;
        if s.begin >= steps {
            // diffusers raises here too ("the number of pipeline steps is ... < 1").
            return Err(ScheduleError::NothingToDenoise { strength, steps });
        }
        Ok(s)
    }

    /// How many transformer evaluations this schedule runs.
    pub fn active_steps(&self) -> usize {
        self.timesteps.len() - self.begin
    }

    /// The sigma the initial latents carry: img2img mixes `sigma·noise + (1−sigma)·image` with it.
    pub fn start_sigma(&self) -> f32 {
        self.sigmas[self.begin]
    }

    /// The steps to run: (step index, timestep input for the transformer (t / 1000, as the
    /// pipeline passes it), sigma, next sigma).
    pub fn steps(&self) -> impl Iterator<Item = Step> + '_ {
        (self.begin..self.timesteps.len()).map(move |i| Step {
            index: i,
            timestep: self.timesteps[i] / NUM_TRAIN_TIMESTEPS,
            sigma: self.sigmas[i],
            sigma_next: self.sigmas[i + 1],
        })
    }
}

/// One denoising step of a schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    pub index: usize,
    pub timestep: f32,
    pub sigma: f32,
    pub sigma_next: f32,
}

impl Step {
    /// Euler update in place: x ← x + (σ_next − σ)·v (the step's f32 arithmetic, unfused).
    pub fn euler(&self, latents: &mut [f32], velocity: &[f32]) {
        assert_eq!(
            latents.len(),
            velocity.len(),
            "latents and velocity differ in size"
        );
        let dt = self.sigma_next - self.sigma;
        for (x, v) in latents.iter_mut().zip(velocity) {
            *x += dt * v;
        }
    }
}

/// Flow-matching noising (scheduler.scale_noise): σ·noise + (1−σ)·latents, in place on `latents`.
pub fn scale_noise(latents: &mut [f32], noise: &[f32], sigma: f32) {
    assert_eq!(
        latents.len(),
        noise.len(),
        "latents and noise differ in size"
    );
    let keep = 1.0 - sigma;
    for (x, n) in latents.iter_mut().zip(noise) {
        *x = sigma * n + keep * *x;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linspace_matches_numpy_endpoints() {
        let s = base_sigmas(4);
        assert_eq!(s, vec![1.0, 0.75, 0.5, 0.25]);
        assert_eq!(base_sigmas(1), vec![1.0]);
    }

    #[test]
    fn img2img_start_uses_python_float_rounding() {
        let cfg = ShiftConfig::default();
        // 28 · 0.6 = 16.8 → t_start = int(11.2) = 11
        assert_eq!(Schedule::img2img(28, 4096, 0.6, &cfg).unwrap().begin, 11);
        // 25 · 0.56 = 14.000000000000002 → t_start = int(10.999999999999998) = 10, not 11
        assert_eq!(Schedule::img2img(25, 4096, 0.56, &cfg).unwrap().begin, 10);
        assert_eq!(Schedule::img2img(10, 4096, 1.0, &cfg).unwrap().begin, 0);
        // 10 · 0.05 = 0.5 → t_start = int(9.5) = 9: one step still runs
        assert_eq!(
            Schedule::img2img(10, 4096, 0.05, &cfg)
                .unwrap()
                .active_steps(),
            1
        );
        assert!(matches!(
            Schedule::img2img(10, 4096, 0.0, &cfg),
            Err(ScheduleError::NothingToDenoise { .. })
        ));
        assert!(Schedule::img2img(10, 4096, 1.5, &cfg).is_err());
    }
}
