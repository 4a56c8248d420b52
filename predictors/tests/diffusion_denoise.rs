//! The denoising loop with an oracle transformer. Flow matching's path from image x0 to noise n is
//! straight (x_σ = σ·n + (1−σ)·x0) with constant velocity n − x0, so a model that predicts that
//! velocity exactly must bring Euler back to x0 from pure noise (txt2img) or from the image noised
//! at the schedule's first sigma (img2img) — whatever the schedule's shift.

use cog_predictors::engine::diffusion::denoise::{
    denoise, gaussian_noise, guidance_input, initial_latents, resolve_seed, Progress,
};
use cog_predictors::engine::diffusion::schedule::{Schedule, ShiftConfig};

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn oracle(x0: &[f32], noise: &[f32]) -> Vec<f32> {
    noise.iter().zip(x0).map(|(n, x)| n - x).collect()
}

#[test]
fn txt2img_with_the_true_velocity_lands_on_the_image() {
    let (x0, noise) = (gaussian_noise(1, 4096), gaussian_noise(2, 4096));
    let s = Schedule::flux(28, 4080, &ShiftConfig::default()).unwrap();
    let mut x = initial_latents(&s, noise.clone(), None);
    assert_eq!(x, noise);
    let v = oracle(&x0, &noise);
    let mut seen = Vec::new();
    denoise(
        &s,
        &mut x,
        |lat, step| {
            // the latents are on the straight path at this step's sigma
            let on_path: Vec<f32> = noise
                .iter()
                .zip(&x0)
                .map(|(n, a)| step.sigma * n + (1.0 - step.sigma) * a)
                .collect();
            assert!(
                max_diff(lat, &on_path) < 1e-4,
                "off the path at step {}",
                step.index
            );
            seen.push(step.timestep);
            Ok::<_, ()>(v.clone())
        },
        |_| Ok(()),
    )
    .unwrap();
    assert!(
        max_diff(&x, &x0) < 1e-4,
        "ended {} away from x0",
        max_diff(&x, &x0)
    );
    let want: Vec<f32> = s.timesteps.iter().map(|t| t / 1000.0).collect();
    assert_eq!(
        seen, want,
        "the transformer sees every timestep / 1000, in order"
    );
}

#[test]
fn img2img_starts_at_strength_and_lands_on_the_image() {
    let (x0, noise) = (gaussian_noise(3, 1024), gaussian_noise(4, 1024));
    let s = Schedule::img2img(28, 1024, 0.6, &ShiftConfig::default()).unwrap();
    let mut x = initial_latents(&s, noise.clone(), Some(&x0));
    let sigma = s.sigmas[11];
    let mixed: Vec<f32> = noise
        .iter()
        .zip(&x0)
        .map(|(n, a)| sigma * n + (1.0 - sigma) * a)
        .collect();
    assert_eq!(x, mixed);
    let v = oracle(&x0, &noise);
    let mut calls = 0;
    let mut progress = Vec::new();
    denoise(
        &s,
        &mut x,
        |_, _| {
            calls += 1;
            Ok::<_, ()>(v.clone())
        },
        |p: &Progress| {
            progress.push((p.number, p.total, p.step.index));
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(calls, 17, "28 − 11 steps");
    assert_eq!(progress.first(), Some(&(1, 17, 11)));
    assert_eq!(progress.last(), Some(&(17, 17, 27)));
    assert!(max_diff(&x, &x0) < 1e-4);
}

#[test]
fn a_cancel_stops_within_one_step() {
    let s = Schedule::flux(10, 256, &ShiftConfig::default()).unwrap();
    let mut x = gaussian_noise(5, 64);
    let cancelled = std::cell::Cell::new(false);
    let mut calls = 0;
    let r = denoise(
        &s,
        &mut x,
        |lat, _| {
            calls += 1;
            if calls == 3 {
                cancelled.set(true); // the cancel arrives while step 3 runs
            }
            Ok(vec![0.5; lat.len()])
        },
        |_| {
            if cancelled.get() {
                Err("cancelled")
            } else {
                Ok(())
            }
        },
    );
    assert_eq!(r, Err("cancelled"));
    assert_eq!(calls, 3, "no evaluation after the cancel was seen");
}

#[test]
fn model_errors_stop_the_loop() {
    let s = Schedule::flux(4, 256, &ShiftConfig::default()).unwrap();
    let mut x = vec![0.0; 8];
    let r = denoise(
        &s,
        &mut x,
        |_, step| {
            if step.index == 1 {
                Err(step.index)
            } else {
                Ok(vec![1.0; 8])
            }
        },
        |_| Ok(()),
    );
    assert_eq!(r, Err(1));
}

#[test]
fn seeded_noise_is_standard_normal_and_repeatable() {
    let a = gaussian_noise(42, 200_001);
    assert_eq!(a, gaussian_noise(42, 200_001));
    assert_ne!(a[..16], gaussian_noise(43, 16)[..]);
    assert_eq!(
        a[..1000],
        gaussian_noise(42, 1000)[..],
        "a prefix does not depend on the length"
    );
    let n = a.len() as f64;
    let mean = a.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    let within_1 = a.iter().filter(|x| x.abs() < 1.0).count() as f64 / n;
    assert!(
        mean.abs() < 0.01 && (var - 1.0).abs() < 0.01,
        "mean {mean}, var {var}"
    );
    assert!((within_1 - 0.6827).abs() < 0.005, "P(|x| < 1) = {within_1}");
    assert_eq!(resolve_seed(Some(9)), 9);
    assert_eq!(guidance_input(3.5, 2), vec![3.5, 3.5]);
}
