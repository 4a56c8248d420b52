"""Golden for cogrs' kohya → diffusers LoRA conversion: a small kohya/sd-scripts FLUX LoRA (BFL
module names; fused qkv, one of them block-sparse so diffusers takes its chunked path; alphas ≠
rank; the final adaLN modulation whose halves diffusers swaps) converted by diffusers'
`_convert_kohya_flux_lora_to_diffusers`. diffusers folds alpha/rank into A and B, so the golden is
each module's weight change B·A. Writes predictors/fixtures/diffusion/lora_kohya.safetensors and
lora_kohya.json.

Run: /work/venv-flux/bin/python weights/reference/flux_lora_golden.py   (diffusers 0.42.1)
"""
import json
import os

import torch
import diffusers
from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers
from safetensors.torch import save_file

FIX = os.path.join(os.path.dirname(__file__), "..", "..", "predictors", "fixtures", "diffusion")
H = 8  # hidden size: diffusers only hard-codes FLUX's sizes for single-block linear1 (left out)
g = torch.Generator().manual_seed(3)


def pair(sd, name, out_f, in_f, rank, alpha=None):
    sd[f"lora_unet_{name}.lora_down.weight"] = torch.randn(rank, in_f, generator=g)
    sd[f"lora_unet_{name}.lora_up.weight"] = torch.randn(out_f, rank, generator=g)
    if alpha is not None:
        sd[f"lora_unet_{name}.alpha"] = torch.tensor(float(alpha))


sd = {}
pair(sd, "double_blocks_0_img_attn_qkv", 3 * H, H, 4, alpha=2)
pair(sd, "double_blocks_1_txt_attn_qkv", 3 * H, H, 6, alpha=12)
# block-sparse fused qkv: each third of B only reads its own third of A's rows
up = sd["lora_unet_double_blocks_1_txt_attn_qkv.lora_up.weight"]
for j in range(3):
    for k in range(3):
        if j != k:
            up[j * H:(j + 1) * H, k * 2:(k + 1) * 2] = 0
pair(sd, "double_blocks_0_txt_mlp_0", 4 * H, H, 4, alpha=8)
pair(sd, "double_blocks_1_img_mod_lin", 6 * H, H, 2)
pair(sd, "single_blocks_3_linear2", H, 5 * H, 4, alpha=1)
pair(sd, "single_blocks_0_modulation_lin", 3 * H, H, 4, alpha=4)
pair(sd, "final_layer_adaLN_modulation_1", 2 * H, H, 2, alpha=2)
pair(sd, "guidance_in_in_layer", H, 4, 2, alpha=3)
save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(FIX, "lora_kohya.safetensors"))

converted = _convert_kohya_flux_lora_to_diffusers({k: v.clone() for k, v in sd.items()})
deltas = {}
for key, a in converted.items():
    if key.endswith(".lora_A.weight"):
        module = key[: -len(".lora_A.weight")]
        module = module[len("transformer."):] if module.startswith("transformer.") else module
        b = converted[key.replace(".lora_A.", ".lora_B.")]
        deltas[module] = dict(shape=[b.shape[0], a.shape[1]], delta=(b @ a).flatten().tolist())
with open(os.path.join(FIX, "lora_kohya.json"), "w") as f:
    json.dump(dict(diffusers=diffusers.__version__, deltas=deltas), f)
print(len(deltas), "modules:", sorted(deltas))
