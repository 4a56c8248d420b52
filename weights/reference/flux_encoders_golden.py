"""Tiny random FLUX.1 encoder components and their goldens, for weights/tests/flux_encoders.rs.

Writes weights/fixtures/flux_encoders/ in the diffusers pipeline layout:
- text_encoder/    CLIPTextModel (CLIP-L structure: quick_gelu, causal mask, learned positions, 77
                   positions; vocab 1000, hidden 32, 4 heads, 2 layers) with eos_token_id 2 as
                   FLUX.1-dev's config has it (pooling then takes the position of the largest id).
- text_encoder_2/  T5EncoderModel (T5 v1.1 structure: gated-gelu with gelu_new, RMS norm, relative
                   position bias with 32 buckets / max_distance 128; d_model 32, 2 heads of 8 (so
                   the attention width 16 differs from d_model), 2 layers, vocab 512).
- vae/             AutoencoderKL as FLUX's (latent 16, no quant_conv / post_quant_conv, mid-block
                   attention, 4 levels so the scale factor is 8) with block_out_channels
                   [8, 8, 16, 16], norm_num_groups 4, layers_per_block 1.
Weights are drawn with a larger std than the default init (so every layer matters) and stored in
fp16; the values are exactly representable, and the references load the committed folders in
fp32.

Inputs are padded as FluxPipeline pads them: CLIP ids begin with BOS and end with EOS, padded
with EOS to 77 (FLUX's CLIP tokenizer pads with <|endoftext|>); T5 ids end with </s> (1), padded
with <pad> (0) to 512. No attention mask is passed to either encoder, as FluxPipeline passes none.

golden.json: ids, CLIP pooled outputs (for eos_token_id 2, and for the same weights with
eos_token_id 500, the transformers >= 4.31 path that pools at the first EOS), T5 outputs for a
short sequence, shapes and the names of the binary goldens; *.f32: little-endian float32 arrays
(T5 at 512 tokens, VAE image/latents).

Run: /work/venv-flux/bin/python weights/reference/flux_encoders_golden.py
"""
import json
import os

import numpy as np
import torch
import transformers
import diffusers
from diffusers import AutoencoderKL
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

FIX = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "fixtures", "flux_encoders"))
STORE = torch.float16


def randomize(model, std=0.15):
    """Large-ish random weights, rounded through the storage dtype."""
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            elif "relative_attention_bias" in name:
                p.copy_(0.5 * torch.randn_like(p))
            else:
                p.copy_(std * torch.randn_like(p))
            p.copy_(p.to(STORE).to(torch.float32))


def save_f32(name, t):
    a = np.ascontiguousarray(t.detach().cpu().numpy().astype("<f4"))
    a.tofile(os.path.join(FIX, name))
    return dict(file=name, shape=list(a.shape))


def clip(golden):
    cfg = CLIPTextConfig(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
                         layer_norm_eps=1e-5, bos_token_id=0, eos_token_id=2, pad_token_id=1,
                         projection_dim=32)
    model = CLIPTextModel(cfg).eval()
    randomize(model)
    out = os.path.join(FIX, "text_encoder")
    model.to(STORE).save_pretrained(out, safe_serialization=True)
    model = CLIPTextModel.from_pretrained(out, dtype=torch.float32).eval()

    bos, eos = 998, 999
    rows = [[bos, 5, 17, 400, 923, 77, eos], [bos] + [(37 * i + 11) % 990 for i in range(30)] + [eos]]
    ids = torch.tensor([r + [eos] * (77 - len(r)) for r in rows])
    with torch.no_grad():
        pooled = model(ids).pooler_output
        # The same weights with a real EOS id (the path that pools at the first EOS): EOS 500,
        # and ids above 500 before it, so the largest id is elsewhere.
        model.eos_token_id = 500
        rows2 = [[bos, 5, 900, 17, 500, 3], [bos, 700, 800, 1, 2, 3, 4, 500]]
        ids2 = torch.tensor([r + [500] * (77 - len(r)) for r in rows2])
        pooled_eos = model(ids2).pooler_output
    golden["clip"] = dict(input_ids=ids.tolist(), pooled_output=pooled.flatten().tolist(),
                          eos500_input_ids=ids2.tolist(),
                          eos500_pooled_output=pooled_eos.flatten().tolist(),
                          hidden=cfg.hidden_size)


def t5(golden):
    cfg = T5Config(vocab_size=512, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=2,
                   relative_attention_num_buckets=32, relative_attention_max_distance=128,
                   feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, is_encoder_decoder=False,
                   use_cache=False, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    model = T5EncoderModel(cfg).eval()
    randomize(model)
    out = os.path.join(FIX, "text_encoder_2")
    model.to(STORE).save_pretrained(out, safe_serialization=True)
    model = T5EncoderModel.from_pretrained(out, dtype=torch.float32).eval()

    rows = [[37, 5, 201, 9, 88, 1], [(13 * i + 7) % 500 + 2 for i in range(150)] + [1]]
    ids = torch.tensor([r + [0] * (512 - len(r)) for r in rows])
    short = torch.tensor([[(29 * i + 3) % 500 + 2 for i in range(19)] + [1]])
    with torch.no_grad():
        full = model(ids).last_hidden_state
        short_out = model(short).last_hidden_state
    golden["t5"] = dict(input_ids=ids.tolist(), last_hidden_state=save_f32("t5_last_hidden_state.f32", full),
                        short_input_ids=short.tolist(), short_last_hidden_state=short_out.flatten().tolist(),
                        d_model=cfg.d_model)


def vae(golden):
    model = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 16, 16), layers_per_block=1,
        act_fn="silu", latent_channels=16, norm_num_groups=4, sample_size=32, scaling_factor=0.3611,
        shift_factor=0.1159, force_upcast=True, use_quant_conv=False, use_post_quant_conv=False,
        mid_block_add_attention=True).eval()
    randomize(model, std=0.2)
    out = os.path.join(FIX, "vae")
    model.to(STORE).save_pretrained(out, safe_serialization=True)
    model = AutoencoderKL.from_pretrained(out, torch_dtype=torch.float32).eval()

    g = torch.Generator().manual_seed(7)
    image = torch.rand(2, 3, 32, 40, generator=g) * 2 - 1
    latent = torch.randn(2, 16, 4, 5, generator=g)
    with torch.no_grad():
        post = model.encode(image).latent_dist
        decoded = model.decode(latent).sample
    golden["vae"] = dict(image=save_f32("vae_image.f32", image),
                         latent_mean=save_f32("vae_latent_mean.f32", post.mean),
                         latent_logvar=save_f32("vae_latent_logvar.f32", post.logvar),
                         latent=save_f32("vae_latent.f32", latent),
                         decoded=save_f32("vae_decoded.f32", decoded))


def main():
    torch.manual_seed(20261126)
    os.makedirs(FIX, exist_ok=True)
    golden = dict(transformers=transformers.__version__, diffusers=diffusers.__version__,
                  torch=torch.__version__)
    clip(golden)
    t5(golden)
    vae(golden)
    with open(os.path.join(FIX, "golden.json"), "w") as f:
        json.dump(golden, f)
    total = 0
    for root, _, files in os.walk(FIX):
        for n in files:
            total += os.path.getsize(os.path.join(root, n))
    print("wrote", FIX, total, "bytes")


if __name__ == "__main__":
    main()
