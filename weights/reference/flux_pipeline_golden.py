"""Goldens for cogrs' FLUX pipeline engine: diffusers' FluxPipeline and FluxImg2ImgPipeline on a tiny
random FLUX pipeline (the CLIP, T5 and VAE of weights/fixtures/flux_encoders, a new tiny transformer
sized to them, two tiny random LoRAs), 64x64 images, 3 steps, for LoRA off / LoRA 1 / LoRA 2 / both.

Writes weights/fixtures/flux_pipeline/: transformer/ (config + weights), lora_a.safetensors (PEFT
keys, rank 4), lora_b.safetensors (kohya keys with diffusers module names, rank 2, alpha 1),
scheduler_config.json, model_index.json, init.png (the img2img input), *.f32 (noise and images,
little-endian) and golden.json. predictors/tests/flux_pipeline.rs assembles the pipeline folder from
these plus the real tokenizers in .cache/diffusion (scripts/setup) and compares.

Same inputs on both sides:
- Token ids: the real CLIP and T5 tokenizers, then every id clamped to the tiny text encoders'
  vocabulary (min(id, vocab - 1)); the embeddings are computed here as FluxPipeline computes them
  and passed as prompt_embeds / pooled_prompt_embeds. cogrs' engine clamps the same way when a
  text encoder's vocabulary is smaller than its tokenizer's (only tiny test models are).
- Noise: txt2img gets `latents=` (the stored noise, packed); img2img draws from a torch generator,
  first the VAE posterior sample, then the noise (the order FluxImg2ImgPipeline draws them); both
  draws are stored and fed to cogrs.
- LoRAs: unmerged branches y += s * alpha/rank * B(Ax) through forward hooks (what diffusers' PEFT
  layers compute), as weights/reference/flux_transformer_golden.py does.

Images are stored as the pipelines' float output (output_type="pt", (x/2+0.5) clamped to [0, 1]).

Run: /work/venv-flux/bin/python weights/reference/flux_pipeline_golden.py   (diffusers 0.42.1)
"""
import json
import os
import tempfile

import numpy as np
import torch
import diffusers
from PIL import Image
from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxImg2ImgPipeline,
                       FluxPipeline, FluxTransformer2DModel)
from safetensors.torch import save_file
from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

HERE = os.path.dirname(__file__)
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
ENC = os.path.join(ROOT, "weights", "fixtures", "flux_encoders")
FIX = os.path.join(ROOT, "weights", "fixtures", "flux_pipeline")
CACHE = os.path.join(ROOT, ".cache", "diffusion")
os.makedirs(FIX, exist_ok=True)
torch.manual_seed(0)
g = torch.Generator().manual_seed(11)

W = H_IMG = 64
STEPS = 3
GUIDANCE = 3.5
STRENGTH = 0.7
PROMPT = "GHIBSKY style, a Cinematic cat on a hill"

# --- components -----------------------------------------------------------------------------
HID = 32  # 2 heads x 16
transformer = FluxTransformer2DModel(
    patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
    num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
    axes_dims_rope=(4, 6, 6),
).eval()
with torch.no_grad():
    for name, p in transformer.named_parameters():
        if "norm" in name and name.endswith(".weight") and p.ndim == 1:
            p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
transformer.save_pretrained(os.path.join(FIX, "transformer"), safe_serialization=True)
clip_enc = CLIPTextModel.from_pretrained(os.path.join(ENC, "text_encoder"), torch_dtype=torch.float32).eval()
t5_enc = T5EncoderModel.from_pretrained(os.path.join(ENC, "text_encoder_2"), torch_dtype=torch.float32).eval()
vae = AutoencoderKL.from_pretrained(os.path.join(ENC, "vae"), torch_dtype=torch.float32).eval()
sched_cfg = dict(shift=3.0, use_dynamic_shifting=True, base_image_seq_len=256, max_image_seq_len=4096,
                 base_shift=0.5, max_shift=1.15, num_train_timesteps=1000)
scheduler = FlowMatchEulerDiscreteScheduler(**sched_cfg)
json.dump(dict(sched_cfg, _class_name="FlowMatchEulerDiscreteScheduler"),
          open(os.path.join(FIX, "scheduler_config.json"), "w"), indent=2)
json.dump({"_class_name": "FluxPipeline", "_diffusers_version": diffusers.__version__},
          open(os.path.join(FIX, "model_index.json"), "w"), indent=2)

# --- LoRAs ----------------------------------------------------------------------------------
branches = [{}, {}]
lora_a, lora_b = {}, {}
for m, out_f, in_f in [("transformer_blocks.0.attn.to_q", HID, HID), ("transformer_blocks.0.attn.add_v_proj", HID, HID),
                       ("transformer_blocks.0.ff.net.2", HID, 4 * HID), ("single_transformer_blocks.0.proj_mlp", 4 * HID, HID),
                       ("proj_out", 64, HID)]:
    a, b = 0.3 * torch.randn(4, in_f, generator=g), 0.3 * torch.randn(out_f, 4, generator=g)
    lora_a[f"transformer.{m}.lora_A.weight"], lora_a[f"transformer.{m}.lora_B.weight"] = a, b
    branches[0][m] = (a, b, 1.0)
for m, out_f, in_f in [("transformer_blocks.0.attn.to_q", HID, HID), ("transformer_blocks.0.attn.to_out.0", HID, HID),
                       ("single_transformer_blocks.0.attn.to_k", HID, HID), ("x_embedder", HID, 64)]:
    d, u = 0.3 * torch.randn(2, in_f, generator=g), 0.3 * torch.randn(out_f, 2, generator=g)
    k = "lora_unet_" + m.replace(".", "_")
    lora_b[f"{k}.lora_down.weight"], lora_b[f"{k}.lora_up.weight"] = d, u
    lora_b[f"{k}.alpha"] = torch.tensor(1.0)
    branches[1][m] = (d, u, 0.5)
save_file(lora_a, os.path.join(FIX, "lora_a.safetensors"))
save_file(lora_b, os.path.join(FIX, "lora_b.safetensors"))
modules = dict(transformer.named_modules())


def with_loras(scales, fn):
    hooks = []
    for br, s in zip(branches, scales):
        if s == 0:
            continue
        for m, (a, b, sc) in br.items():
            def hook(mod, inp, out, a=a, b=b, k=sc * s):
                return out + (inp[0] @ a.T) @ b.T * k
            hooks.append(modules[m].register_forward_hook(hook))
    try:
        with torch.no_grad():
            return fn()
    finally:
        for h in hooks:
            h.remove()


# --- prompt embeddings from clamped real-tokenizer ids --------------------------------------
def clip_files(tmp):
    """vocab.json / merges.txt from CLIP's BPE file (as weights/reference/flux_tokenizer_golden.py)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    chars = [chr(c) for c in cs]
    merges = open(os.path.join(CACHE, "clip", "bpe_simple_vocab_16e6.txt"), encoding="utf-8").read().split("\n")
    merges = merges[1: 49152 - 256 - 2 + 1]
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    json.dump({v: i for i, v in enumerate(vocab)}, open(os.path.join(tmp, "vocab.json"), "w"))
    open(os.path.join(tmp, "merges.txt"), "w", encoding="utf-8").write("#version: 0.2\n" + "\n".join(merges) + "\n")


with tempfile.TemporaryDirectory() as tmp:
    clip_files(tmp)
    clip_tok = CLIPTokenizer(os.path.join(tmp, "vocab.json"), os.path.join(tmp, "merges.txt"), pad_token="<|endoftext|>")
t5_tok = T5TokenizerFast(tokenizer_file=os.path.join(CACHE, "t5", "tokenizer.json"))
clip_ids = clip_tok(PROMPT, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
t5_ids = t5_tok(PROMPT, padding="max_length", max_length=512, truncation=True, return_tensors="pt").input_ids
clip_ids_c = clip_ids.clamp(max=clip_enc.config.vocab_size - 1)
t5_ids_c = t5_ids.clamp(max=t5_enc.config.vocab_size - 1)
with torch.no_grad():
    pooled = clip_enc(clip_ids_c, output_hidden_states=False).pooler_output
    embeds = t5_enc(t5_ids_c, output_hidden_states=False)[0]

# --- pipelines ------------------------------------------------------------------------------
common = dict(scheduler=scheduler, vae=vae, text_encoder=clip_enc, tokenizer=clip_tok, text_encoder_2=t5_enc,
              tokenizer_2=t5_tok, transformer=transformer)
txt2img = FluxPipeline(**common)
img2img = FluxImg2ImgPipeline(**common)

lat_shape = (1, 16, H_IMG // 8, W // 8)
noise = torch.randn(lat_shape, generator=g)
packed = FluxPipeline._pack_latents(noise, 1, 16, H_IMG // 8, W // 8)

# The img2img input: a smooth random 64x64 picture.
yy, xx = np.mgrid[0:H_IMG, 0:W] / W
rgb = np.stack([0.5 + 0.4 * np.sin(6 * xx + 1), 0.5 + 0.4 * np.cos(5 * yy), 0.5 + 0.3 * np.sin(4 * (xx + yy))], -1)
Image.fromarray((rgb * 255).round().astype(np.uint8)).save(os.path.join(FIX, "init.png"))
init = Image.open(os.path.join(FIX, "init.png")).convert("RGB")
I2I_SEED = 5
gen = torch.Generator().manual_seed(I2I_SEED)
posterior_noise = torch.randn(lat_shape, generator=gen)
i2i_noise = torch.randn(lat_shape, generator=gen)


def f32(name, t):
    t.detach().to(torch.float32).contiguous().numpy().astype("<f4").tofile(os.path.join(FIX, name))
    return {"file": name, "shape": list(t.shape)}


cases = {"off": [0.0, 0.0], "lora_a": [0.8, 0.0], "lora_b": [0.0, 1.2], "both": [0.8, 1.2]}
run = dict(prompt_embeds=embeds, pooled_prompt_embeds=pooled, height=H_IMG, width=W, num_inference_steps=STEPS,
           guidance_scale=GUIDANCE, output_type="pt")
out_cases = {}
for name, scales in cases.items():
    t2i = with_loras(scales, lambda: txt2img(latents=packed.clone(), **run).images[0])
    i2i = with_loras(scales, lambda: img2img(image=init, strength=STRENGTH,
                                             generator=torch.Generator().manual_seed(I2I_SEED), **run).images[0])
    out_cases[name] = {"scales": scales, "txt2img": f32(f"txt2img_{name}.f32", t2i),
                       "img2img": f32(f"img2img_{name}.f32", i2i)}

golden = dict(
    diffusers=diffusers.__version__, torch=torch.__version__, prompt=PROMPT, width=W, height=H_IMG,
    steps=STEPS, guidance=GUIDANCE, strength=STRENGTH,
    clip_ids=clip_ids[0].tolist(), t5_ids=t5_ids[0].tolist()[:40],
    noise=f32("noise.f32", noise), posterior_noise=f32("posterior_noise.f32", posterior_noise),
    img2img_noise=f32("img2img_noise.f32", i2i_noise),
    loras=[{"file": "lora_a.safetensors", "name": "open-image-preferences"},
           {"file": "lora_b.safetensors", "name": "ghibsky"}],
    cases=out_cases,
)
json.dump(golden, open(os.path.join(FIX, "golden.json"), "w"), indent=1)
print("wrote", FIX)
