"""Goldens for cogrs' FLUX image stages, from diffusers' VaeImageProcessor as FluxPipeline /
FluxImg2ImgPipeline use it (vae_scale_factor 8 · 2):
- postprocess(output_type="pil") of a (1, 3, 5, 7) decoder output → 8-bit RGB
- preprocess(PIL image, height, width) of a small synthetic PNG (committed beside) → (3, H, W) f32
Writes predictors/fixtures/diffusion/image.json and predictors/fixtures/diffusion/img2img_input.png.

Run: /work/venv-flux/bin/python weights/reference/flux_image_golden.py   (diffusers 0.42.1, Pillow)
"""
import json
import os

import numpy as np
import torch
import PIL
from PIL import Image
import diffusers
from diffusers.image_processor import VaeImageProcessor

FIX = os.path.join(os.path.dirname(__file__), "..", "..", "predictors", "fixtures", "diffusion")
proc = VaeImageProcessor(vae_scale_factor=16)

gen = torch.Generator().manual_seed(1)
out = torch.rand(1, 3, 5, 7, generator=gen) * 2.6 - 1.3  # includes values outside [-1, 1]
# values whose 8-bit value is exactly k + 0.5 in f32 (numpy rounds those half to even)
out[0, 0, 0, :4] = torch.tensor([(2 * (k + 0.5) / 255 - 1) for k in (0, 1, 2, 127)])
rgb = np.array(proc.postprocess(out, output_type="pil")[0])

# A 40×30 input: gradients, a hard edge and noise, so the resize filter matters.
rng = np.random.default_rng(0)
y, x = np.mgrid[0:30, 0:40]
img = np.stack([x * 6, y * 8, ((x // 10 + y // 10) % 2) * 255], axis=-1).astype(np.float64)
img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
png = os.path.join(FIX, "img2img_input.png")
Image.fromarray(img).save(png)
pre = proc.preprocess(Image.open(png), height=16, width=32)  # (1, 3, 16, 32)

with open(os.path.join(FIX, "image.json"), "w") as f:
    json.dump(dict(diffusers=diffusers.__version__, pillow=PIL.__version__,
                   decoded=out.flatten().tolist(), rgb=rgb.flatten().tolist(), rgb_shape=list(rgb.shape),
                   preprocessed=pre.flatten().tolist(), preprocessed_shape=list(pre.shape[1:])), f)
print("wrote", os.path.normpath(FIX), os.path.getsize(png), "byte png")
