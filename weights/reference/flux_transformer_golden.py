"""Goldens for cogrs' FLUX transformer graph: a tiny random diffusers FluxTransformer2DModel (2 double
+ 2 single blocks, 2 heads x 16, RoPE axes (4, 6, 6), guidance embedding) and two tiny random LoRAs
of different ranks and target sets, with the transformer's output for fixed inputs:
- LoRA off,
- LoRA 1 (diffusers/PEFT keys, rank 4, no alpha) at scale 0.8,
- LoRA 2 (kohya keys with BFL module names, rank 2, alpha 1: fused qkv and linear1 split by the
  converter, final adaLN modulation halves swapped) at scale 1.0,
- both (0.8, 1.0).
LoRA outputs come from unmerged LoRA branches, as diffusers runs loaded LoRAs (PEFT layers):
y = W x + b + s * alpha/rank * B (A x) on every targeted linear, with the kohya file mapped to
diffusers modules as diffusers' `_convert_kohya_flux_lora_to_diffusers` maps it (that function
hard-codes FLUX-size single blocks, so the mapping is spelled out here; cogrs' converter is tested
against diffusers' own in predictors/tests/diffusion_lora.rs).

Writes weights/fixtures/flux_transformer/ (config.json, diffusion_pytorch_model.safetensors,
lora_peft.safetensors, lora_kohya.safetensors, golden.json).

Run: /work/venv-flux/bin/python weights/reference/flux_transformer_golden.py   (diffusers 0.42.1)
"""
import json
import math
import os

import torch
import diffusers
from diffusers import FluxTransformer2DModel
from safetensors.torch import save_file

FIX = os.path.join(os.path.dirname(__file__), "..", "fixtures", "flux_transformer")
os.makedirs(FIX, exist_ok=True)
torch.manual_seed(0)
g = torch.Generator().manual_seed(7)

model = FluxTransformer2DModel(
    patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16,
    num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16, guidance_embeds=True,
    axes_dims_rope=(4, 6, 6),
).eval()
# Every parameter random (norm weights around 1) so a weight the graph ignored would show.
with torch.no_grad():
    for name, p in model.named_parameters():
        if "norm" in name and name.endswith(".weight") and p.ndim == 1:
            p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(0.15 * torch.randn(p.shape, generator=g))
model.save_pretrained(FIX, safe_serialization=True)
H = 32

# Inputs: batch 2, a 3x4 packed latent grid (12 image tokens), 5 text tokens. Text ids are not all
# zero (the pipeline's are) so RoPE's first axis is exercised too.
B, N_TXT, GH, GW = 2, 5, 3, 4
hidden = torch.randn(B, GH * GW, 16, generator=g)
enc = torch.randn(B, N_TXT, 32, generator=g)
pooled = torch.randn(B, 16, generator=g)
timestep = torch.tensor([0.7, 0.25])
guidance = torch.tensor([3.5, 1.0])
img_ids = torch.zeros(GH, GW, 3)
img_ids[..., 1] = torch.arange(GH)[:, None]
img_ids[..., 2] = torch.arange(GW)[None, :]
img_ids = img_ids.reshape(-1, 3)
txt_ids = torch.zeros(N_TXT, 3)
txt_ids[:, 0] = torch.tensor([0.0, 1.0, 2.0, 5.0, 9.0])

# LoRA 1: diffusers/PEFT keys, rank 4.
R1 = 4
lora1 = {}
mods1 = [
    ("transformer_blocks.0.attn.to_q", H, H), ("transformer_blocks.0.attn.to_v", H, H),
    ("transformer_blocks.0.attn.add_k_proj", H, H), ("transformer_blocks.1.attn.to_out.0", H, H),
    ("transformer_blocks.1.ff.net.0.proj", 4 * H, H), ("transformer_blocks.1.ff_context.net.2", H, 4 * H),
    ("transformer_blocks.0.norm1.linear", 6 * H, H),
    ("single_transformer_blocks.0.attn.to_k", H, H), ("single_transformer_blocks.1.proj_mlp", 4 * H, H),
    ("single_transformer_blocks.1.proj_out", H, 5 * H),
    ("x_embedder", H, 16), ("proj_out", 16, H),
]
# module -> [(A, B, alpha/rank)]: the branches of one LoRA on that module
branches1 = {}
for m, out_f, in_f in mods1:
    a = 0.3 * torch.randn(R1, in_f, generator=g)
    b = 0.3 * torch.randn(out_f, R1, generator=g)
    lora1[f"transformer.{m}.lora_A.weight"] = a
    lora1[f"transformer.{m}.lora_B.weight"] = b
    branches1[m] = [(a, b, 1.0)]  # alpha = rank
save_file(lora1, os.path.join(FIX, "lora_peft.safetensors"))

# LoRA 2: kohya keys, BFL module names, rank 2, alpha 1 (scale 0.5).
R2, ALPHA2 = 2, 1.0
lora2 = {}
branches2 = {}


def kohya(name, out_f, in_f):
    d = 0.3 * torch.randn(R2, in_f, generator=g)
    u = 0.3 * torch.randn(out_f, R2, generator=g)
    lora2[f"lora_unet_{name}.lora_down.weight"] = d
    lora2[f"lora_unet_{name}.lora_up.weight"] = u
    lora2[f"lora_unet_{name}.alpha"] = torch.tensor(ALPHA2)
    return d, u


def add(m, a, b):
    branches2.setdefault(m, []).append((a, b, ALPHA2 / R2))


d, u = kohya("double_blocks_0_img_attn_qkv", 3 * H, H)  # B rows [q; k; v], A shared
for i, m in enumerate(["to_q", "to_k", "to_v"]):
    add(f"transformer_blocks.0.attn.{m}", d, u[i * H:(i + 1) * H])
add("transformer_blocks.1.ff_context.net.0.proj", *kohya("double_blocks_1_txt_mlp_0", 4 * H, H))
add("transformer_blocks.1.norm1_context.linear", *kohya("double_blocks_1_txt_mod_lin", 6 * H, H))
d, u = kohya("single_blocks_1_linear1", 3 * H + 4 * H, H)  # B rows [q; k; v; mlp]
for i, m in enumerate(["attn.to_q", "attn.to_k", "attn.to_v"]):
    add(f"single_transformer_blocks.1.{m}", d, u[i * H:(i + 1) * H])
add("single_transformer_blocks.1.proj_mlp", d, u[3 * H:])
add("single_transformer_blocks.0.proj_out", *kohya("single_blocks_0_linear2", H, 5 * H))
add("single_transformer_blocks.0.norm.linear", *kohya("single_blocks_0_modulation_lin", 3 * H, H))
d, u = kohya("final_layer_adaLN_modulation_1", 2 * H, H)  # BFL (shift, scale); diffusers (scale, shift)
add("norm_out.linear", d, torch.cat([u[H:], u[:H]]))
add("context_embedder", *kohya("txt_in", H, 32))
add("time_text_embed.guidance_embedder.linear_1", *kohya("guidance_in_in_layer", H, 256))
save_file({k: v.contiguous() for k, v in lora2.items()}, os.path.join(FIX, "lora_kohya.safetensors"))

modules = dict(model.named_modules())


def run(s1, s2):
    hooks = []
    for branches, s in ((branches1, s1), (branches2, s2)):
        if s == 0:
            continue
        for m, bs in branches.items():
            def hook(mod, inp, out, bs=bs, s=s):
                for a, b, scale in bs:
                    out = out + (inp[0] @ a.T) @ b.T * (scale * s)
                return out
            hooks.append(modules[m].register_forward_hook(hook))
    with torch.no_grad():
        out = model(hidden_states=hidden, encoder_hidden_states=enc, pooled_projections=pooled,
                    timestep=timestep, img_ids=img_ids, txt_ids=txt_ids, guidance=guidance,
                    return_dict=False)[0]
    for h in hooks:
        h.remove()
    return out.flatten().tolist()


S1, S2 = 0.8, 1.0
cases = {"off": [0.0, 0.0], "lora1": [S1, 0.0], "lora2": [0.0, S2], "both": [S1, S2]}
outputs = {name: run(*s) for name, s in cases.items()}

golden = dict(
    diffusers=diffusers.__version__, torch=torch.__version__,
    inputs=dict(hidden_states=hidden.flatten().tolist(), hidden_states_shape=list(hidden.shape),
                encoder_hidden_states=enc.flatten().tolist(), encoder_hidden_states_shape=list(enc.shape),
                pooled_projections=pooled.flatten().tolist(), timestep=timestep.tolist(),
                guidance=guidance.tolist(), img_ids=img_ids.flatten().tolist(),
                txt_ids=txt_ids.flatten().tolist()),
    sample_shape=[B, GH * GW, 16],
    # Timesteps' frequency table exp(-ln(10000) j / 128) as torch's vectorised float32 exp gives
    # it (a few entries are 1 ulp from the correctly rounded values the graph uses)
    time_proj_frequencies=torch.exp(
        -math.log(10000) * torch.arange(0, 128, dtype=torch.float32) / 128).tolist(),
    # per case: the scale of [LoRA 1 (lora_peft), LoRA 2 (lora_kohya)]
    cases={name: dict(scales=cases[name], sample=outputs[name]) for name in cases},
)
with open(os.path.join(FIX, "golden.json"), "w") as f:
    json.dump(golden, f)
for name in cases:
    o = torch.tensor(outputs[name])
    print(name, "max |sample|", float(o.abs().max()),
          "max diff from off", float((o - torch.tensor(outputs["off"])).abs().max()))
print("fixture bytes:", {f: os.path.getsize(os.path.join(FIX, f)) for f in sorted(os.listdir(FIX))})
