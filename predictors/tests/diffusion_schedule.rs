//! The FLUX schedule and latent stages against goldens diffusers 0.42.1 produced
//! (weights/reference/flux_schedule_golden.py → predictors/fixtures/diffusion/schedule.json).
//! The schedule's values must be bit-identical: they are the same f32 arithmetic.

use cog_predictors::engine::diffusion::latents::{self, LatentShape, VaeScaling};
use cog_predictors::engine::diffusion::schedule::{scale_noise, Schedule, ShiftConfig};
use serde_json::Value;

fn golden() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/diffusion/schedule.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("read schedule.json")).unwrap()
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn usize_of(v: &Value) -> usize {
    v.as_u64().unwrap() as usize
}

/// Largest difference in units of the larger magnitude's f32 epsilon (0 = identical).
fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / (f32::EPSILON * x.abs().max(y.abs()).max(1e-30)))
        .fold(0.0, f32::max)
}

#[test]
fn txt2img_sigmas_timesteps_and_mu_equal_diffusers() {
    let g = golden();
    let cfg = ShiftConfig::default();
    for case in g["txt2img"].as_array().unwrap() {
        let (steps, seq) = (usize_of(&case["steps"]), usize_of(&case["seq_len"]));
        let s = Schedule::flux(steps, seq, &cfg).unwrap();
        // serde_json's float parsing may be 1 ulp off the text (no float_roundtrip feature).
        let mu = case["mu"].as_f64().unwrap();
        assert!(
            (s.mu - mu).abs() <= 2.0 * f64::EPSILON * mu.abs(),
            "mu for {seq} tokens"
        );
        assert_eq!(
            s.sigmas,
            f32s(&case["sigmas"]),
            "sigmas for {steps} steps, {seq} tokens"
        );
        assert_eq!(
            s.timesteps,
            f32s(&case["timesteps"]),
            "timesteps for {steps} steps"
        );
        assert_eq!(*s.sigmas.last().unwrap(), 0.0);
        assert_eq!(s.active_steps(), steps);
    }
}

#[test]
fn img2img_start_noising_and_first_step_equal_diffusers() {
    let g = golden();
    let cfg = ShiftConfig::default();
    for case in g["img2img"].as_array().unwrap() {
        let steps = usize_of(&case["steps"]);
        let strength = case["strength"].as_f64().unwrap();
        let s = Schedule::img2img(steps, usize_of(&case["seq_len"]), strength, &cfg).unwrap();
        assert_eq!(
            s.begin,
            usize_of(&case["begin"]),
            "start for strength {strength}"
        );
        assert_eq!(s.timesteps[s.begin..], f32s(&case["timesteps"])[..]);
        let mut x = f32s(&case["image_latents"]);
        scale_noise(&mut x, &f32s(&case["noise"]), s.start_sigma());
        assert_eq!(
            max_rel(&x, &f32s(&case["mixed"])),
            0.0,
            "noised latents, strength {strength}"
        );
        s.steps()
            .next()
            .unwrap()
            .euler(&mut x, &f32s(&case["velocity"]));
        assert_eq!(
            max_rel(&x, &f32s(&case["stepped"])),
            0.0,
            "first step, strength {strength}"
        );
    }
}

#[test]
fn euler_trajectory_equals_diffusers() {
    let g = golden();
    let t = &g["trajectory"];
    let s = Schedule::flux(6, 4096, &ShiftConfig::default()).unwrap();
    let mut x = f32s(&t["start"]);
    let velocities = t["velocities"].as_array().unwrap();
    let states = t["states"].as_array().unwrap();
    assert_eq!(s.steps().count(), velocities.len());
    for (step, (v, want)) in s.steps().zip(velocities.iter().zip(states)) {
        assert_eq!(step.timestep, s.timesteps[step.index] / 1000.0);
        step.euler(&mut x, &f32s(v));
        assert_eq!(max_rel(&x, &f32s(want)), 0.0, "after step {}", step.index);
    }
}

#[test]
fn packing_ids_and_vae_scaling_equal_diffusers() {
    let g = golden();
    let p = &g["packing"];
    let dims: Vec<usize> = p["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(usize_of)
        .collect();
    let shape = LatentShape {
        batch: dims[0],
        channels: dims[1],
        height: dims[2],
        width: dims[3],
    };
    assert_eq!(
        shape,
        LatentShape::for_image(dims[0], dims[1], dims[3] * 8, dims[2] * 8)
    );
    let lat = f32s(&p["latents"]);
    let packed = latents::pack(&lat, shape);
    assert_eq!(packed, f32s(&p["packed"]));
    assert_eq!(latents::unpack(&packed, shape), lat);
    // diffusers' ids are per image (the batch shares them).
    assert_eq!(latents::image_ids(shape), f32s(&p["image_ids"]));
    assert_eq!(latents::text_ids(4), vec![0.0; 12]);
    let vae = VaeScaling::default();
    let mut to = lat.clone();
    vae.to_vae(&mut to);
    assert!(
        max_rel(&to, &f32s(&p["to_vae"])) <= 1.0,
        "z / scaling + shift"
    );
    let mut from = lat.clone();
    vae.from_vae(&mut from);
    assert!(
        max_rel(&from, &f32s(&p["from_vae"])) <= 1.0,
        "(z - shift) · scaling"
    );
}
