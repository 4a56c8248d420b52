"""Goldens for cogrs' FLUX schedule and latent stages, made with diffusers itself (not re-derived):
FlowMatchEulerDiscreteScheduler with FLUX.1-dev's scheduler config, FluxPipeline's sigmas/mu,
FluxImg2ImgPipeline.get_timesteps / scale_noise, and the pipeline's _pack_latents /
_unpack_latents / _prepare_latent_image_ids. Writes predictors/fixtures/diffusion/schedule.json.

Run: /work/venv-flux/bin/python weights/reference/flux_schedule_golden.py   (diffusers 0.42.1, torch, CPU)
"""
import json
import os

import numpy as np
import torch
import diffusers
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux import FluxPipeline, calculate_shift
from diffusers.pipelines.flux.pipeline_flux_img2img import FluxImg2ImgPipeline

# black-forest-labs/FLUX.1-dev scheduler/scheduler_config.json
CONFIG = dict(
    base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15,
    num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
)
OUT = os.path.join(os.path.dirname(__file__), "..", "..", "predictors", "fixtures", "diffusion", "schedule.json")


def schedule(steps, seq_len):
    """What FluxPipeline.__call__ does before its denoising loop."""
    sched = FlowMatchEulerDiscreteScheduler(**CONFIG)
    sigmas = np.linspace(1.0, 1 / steps, steps)
    mu = calculate_shift(seq_len, 256, 4096, 0.5, 1.15)
    sched.set_timesteps(sigmas=sigmas, mu=mu)
    return sched, mu


class _Img2Img:  # the two methods of FluxImg2ImgPipeline used here need only `scheduler`
    get_timesteps = FluxImg2ImgPipeline.get_timesteps

    def __init__(self, scheduler):
        self.scheduler = scheduler


cases = []
for steps, seq_len in [(28, 4096), (28, 1024), (4, 256), (1, 4096), (50, 8160), (40, 5440), (10, 100)]:
    sched, mu = schedule(steps, seq_len)
    cases.append(dict(steps=steps, seq_len=seq_len, mu=mu,
                      sigmas=sched.sigmas.tolist(), timesteps=sched.timesteps.tolist()))

img2img = []
gen = torch.Generator().manual_seed(0)
for steps, seq_len, strength in [(28, 4096, 0.6), (25, 1024, 0.56), (10, 256, 1.0), (10, 256, 0.05), (50, 4096, 0.33)]:
    sched, _ = schedule(steps, seq_len)
    timesteps, n = _Img2Img(sched).get_timesteps(steps, strength, "cpu")
    image_latents = torch.randn(1, 3, 2, 2, generator=gen)
    noise = torch.randn(1, 3, 2, 2, generator=gen)
    mixed = sched.scale_noise(image_latents, timesteps[:1], noise)
    # the Euler step from there, with a made-up velocity
    velocity = torch.randn(1, 3, 2, 2, generator=gen)
    stepped = sched.step(velocity, timesteps[0], mixed, return_dict=False)[0]
    img2img.append(dict(steps=steps, seq_len=seq_len, strength=strength, begin=steps - n,
                        timesteps=timesteps.tolist(), image_latents=image_latents.flatten().tolist(),
                        noise=noise.flatten().tolist(), mixed=mixed.flatten().tolist(),
                        velocity=velocity.flatten().tolist(), stepped=stepped.flatten().tolist()))

# A full txt2img Euler trajectory with made-up velocities: every step's output.
sched, _ = schedule(6, 4096)
sched.set_begin_index(0)
x = torch.randn(1, 4, 8, generator=gen)
trajectory = dict(start=x.flatten().tolist(), velocities=[], states=[])
for t in sched.timesteps:
    v = torch.randn(1, 4, 8, generator=gen)
    x = sched.step(v, t, x, return_dict=False)[0]
    trajectory["velocities"].append(v.flatten().tolist())
    trajectory["states"].append(x.flatten().tolist())

# Packing: (B, C, H, W) = (2, 16, 6, 4) latents (a 64×48 image).
b, c, h, w = 2, 16, 6, 4
lat = torch.randn(b, c, h, w, generator=gen)
packed = FluxPipeline._pack_latents(lat, b, c, h, w)
unpacked = FluxPipeline._unpack_latents(packed, h * 8, w * 8, 8)
assert torch.equal(unpacked, lat)
ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, "cpu", torch.float32)
scale, shift = 0.3611, 0.1159
packing = dict(shape=[b, c, h, w], latents=lat.flatten().tolist(), packed=packed.flatten().tolist(),
               image_ids=ids.flatten().tolist(),
               to_vae=((lat / scale) + shift).flatten().tolist(),
               from_vae=((lat - shift) * scale).flatten().tolist())

with open(OUT, "w") as f:
    json.dump(dict(diffusers=diffusers.__version__, torch=torch.__version__, config=CONFIG,
                   txt2img=cases, img2img=img2img, trajectory=trajectory, packing=packing), f)
print("wrote", os.path.normpath(OUT), os.path.getsize(OUT), "bytes")
