#!/usr/bin/env python3
"""Makes weights/fixtures/gemma3/: a tiny random Gemma3ForConditionalGeneration and its goldens.

The checkpoint has every structural feature of google/gemma-3-4b-it at toy sizes:
- vision: SigLIP, image 56 px, patch 14 (a 4x4 patch grid), 2 layers, hidden 32, 4 heads;
  projector to 4 image tokens (2x2 average pool of the patch grid), Gemma RMSNorm, projection to 64;
- text: 6 layers (layer_types: 5 sliding + 1 full), GQA 4/2, head_dim 16, query_pre_attn_scalar 20
  (not head_dim, so a wrong attention scale shows), sliding_window 4 (shorter than the prompt), local
  rope theta 1e4 and global theta 1e6 with linear scaling 8 (as the 4B), q/k norms, tied lm_head,
  hidden 64 so the embedding scale sqrt(64) = 8 is exact in every dtype;
- special ids inside the 272-token vocabulary: <start_of_image> 255, <end_of_image> 256, image 262.

Weights are drawn with a larger std than the default init (logits far from uniform, no greedy
near-ties) and rounded to bf16, the storage dtype; the reference runs in fp32 on the committed folder.

golden.json (floats written as the shortest text that round-trips their f32 value):
- pixel_values [1, 3, 56, 56]: a fixed 56x56 RGB u8 pattern after the processor's rescale and
  normalisation, (u8 * (1/255) - 0.5) / 0.5 in f32 (already at the model's size, so no resize);
- image_features [1, 4, 64]: model.get_image_features(pixel_values).pooler_output (vision tower +
  projector);
- input_ids: the prompt with the image expanded as the processor does it (<start_of_image>, 4 image
  tokens, <end_of_image>); token_type_ids: 1 at image tokens;
- inputs_embeds [P, 64]: what the language model receives (embeddings scaled by sqrt(hidden), image
  rows replaced by the unscaled image features), captured from the language model's call;
- generated: greedy tokens from generate(pixel_values, token_type_ids, do_sample=False);
- logits [P + N - 1, 272]: one forward over prompt + generated[:-1] with token_type_ids, as generate's
  prefill sees it: image tokens attend to each other bidirectionally (within the sliding window on
  local layers); logits_causal: the same without token_type_ids (plain causal masks everywhere),
  for a decoder that does not implement the bidirectional image block;
- generated_causal: greedy tokens from generate() without token_type_ids (causal masks only).

Second fixture, weights/fixtures/gemma3_vision_896/: the real model's image geometry (896 px, patch
14: a 64x64 patch grid pooled 4x4 to 256 tokens) at toy widths (1 SigLIP layer, hidden 16, 2 heads;
a 1-layer text model of width 24 that only sets the projector's output width). Its pixels are too
many for JSON: both sides compute them from `pattern_u8` (below) and the processor's normalisation.
golden.json there holds image_features [1, 256, 24] only.

Run: /work/venv-ref/bin/python weights/reference/gemma3_golden.py weights/fixtures
"""
import json
import os
import sys

import numpy as np
import torch
import transformers
from transformers import Gemma3Config, Gemma3ForConditionalGeneration

BOI, EOI, IMAGE = 255, 256, 262
MM_TOKENS = 4
# bos, a few "text" ids, the expanded image, more text (ids chosen away from the specials).
PROMPT = [2, 105, 17, 93, 44, BOI] + [IMAGE] * MM_TOKENS + [EOI, 8, 131, 77, 200, 106, 40]
NEW_TOKENS = 8


def config():
    vision = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=48,
                  num_hidden_layers=2, num_attention_heads=4, image_size=56, patch_size=14,
                  layer_norm_eps=1e-6, vision_use_head=False, hidden_act="gelu_pytorch_tanh")
    text = dict(model_type="gemma3_text", vocab_size=272, hidden_size=64, intermediate_size=64,
                num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                query_pre_attn_scalar=20, sliding_window=4, max_position_embeddings=128,
                rms_norm_eps=1e-6, hidden_activation="gelu_pytorch_tanh",
                rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                 "full_attention": {"rope_type": "linear", "factor": 8.0,
                                                    "rope_theta": 1000000.0}},
                pad_token_id=0, eos_token_id=1, bos_token_id=2, tie_word_embeddings=True)
    return Gemma3Config(vision_config=vision, text_config=text, mm_tokens_per_image=MM_TOKENS,
                        boi_token_index=BOI, eoi_token_index=EOI, image_token_index=IMAGE,
                        tie_word_embeddings=True)


def pattern_u8(size):
    """The fixed RGB test image, [3, size, size] u8 (channel-first, as pixel_values are)."""
    y, x = np.mgrid[0:size, 0:size]
    return np.stack([(x * 4 + y) % 256, (y * 5 + 3 * x) % 256, ((x * y) // 3 + 40) % 256]).astype(np.uint8)


def pixel_values(size=56):
    """pattern_u8 normalised as Gemma3ImageProcessor does (rescale 1/255, mean = std = 0.5)."""
    u8 = pattern_u8(size)
    rescaled = (u8.astype(np.float64) * (1 / 255)).astype(np.float32)
    return ((rescaled - np.float32(0.5)) / np.float32(0.5))[None]


def short(a):
    """Floats as the shortest decimal that round-trips the f32 value (keeps the JSON small)."""
    return [float(np.format_float_scientific(v, unique=True)) for v in np.asarray(a, np.float32).reshape(-1)]


def randomise(model):
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "layer_norm" in name or "layernorm" in name:
                # LayerNorm (SigLIP): weight around 1, bias around 0.
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn_like(p))
            elif "norm" in name:
                # Gemma RMSNorm multiplies by (1 + w).
                p.copy_(0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
            p.copy_(p.to(torch.bfloat16).to(torch.float32))


def save(model, out):
    """Saves in bf16 and returns the folder loaded back in fp32 (the reference)."""
    os.makedirs(out, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    for extra in ("generation_config.json",):
        if os.path.exists(os.path.join(out, extra)):
            os.remove(os.path.join(out, extra))
    return Gemma3ForConditionalGeneration.from_pretrained(
        out, dtype=torch.float32, attn_implementation="eager").eval()


def vision_896(out):
    torch.manual_seed(896)
    vision = dict(model_type="siglip_vision_model", hidden_size=16, intermediate_size=16,
                  num_hidden_layers=1, num_attention_heads=2, image_size=896, patch_size=14,
                  layer_norm_eps=1e-6, vision_use_head=False, hidden_act="gelu_pytorch_tanh")
    text = dict(model_type="gemma3_text", vocab_size=16, hidden_size=24, intermediate_size=8,
                num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1, head_dim=8,
                max_position_embeddings=16, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    cfg = Gemma3Config(vision_config=vision, text_config=text, mm_tokens_per_image=256,
                       boi_token_index=13, eoi_token_index=14, image_token_index=15)
    model = Gemma3ForConditionalGeneration(cfg).eval()
    randomise(model)
    model = save(model, out)
    with torch.no_grad():
        feats = model.get_image_features(torch.from_numpy(pixel_values(896))).pooler_output
    golden = {
        "made_by": f"transformers {transformers.__version__}, torch {torch.__version__}",
        "pixels": "pattern_u8(896) of weights/reference/gemma3_golden.py, normalised",
        "image_features_shape": list(feats.shape),
        "image_features": short(feats),
    }
    with open(os.path.join(out, "golden.json"), "w") as f:
        json.dump(golden, f)
    print("gemma3_vision_896 features", feats.shape)


def tiny(out):
    torch.manual_seed(20261126)
    model = Gemma3ForConditionalGeneration(config()).eval()
    randomise(model)
    model = save(model, out)

    pv = torch.from_numpy(pixel_values())
    ids = torch.tensor([PROMPT])
    tt = (ids == IMAGE).long()
    seen = {}

    def grab(_module, _args, kwargs):
        if "inputs_embeds" not in seen:
            seen["inputs_embeds"] = kwargs["inputs_embeds"].detach().clone()

    with torch.no_grad():
        feats = model.get_image_features(pv).pooler_output
        hook = model.model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
        model(input_ids=ids, pixel_values=pv, token_type_ids=tt, attention_mask=torch.ones_like(ids))
        hook.remove()
        gen = model.generate(input_ids=ids, pixel_values=pv, token_type_ids=tt,
                             attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, pad_token_id=0)
        full = gen[:, :-1]
        tt_full = (full == IMAGE).long()
        logits = model(input_ids=full, pixel_values=pv, token_type_ids=tt_full,
                       attention_mask=torch.ones_like(full)).logits[0]
        logits_causal = model(input_ids=full, pixel_values=pv,
                              attention_mask=torch.ones_like(full)).logits[0]
        gen_causal = model.generate(input_ids=ids, pixel_values=pv, attention_mask=torch.ones_like(ids),
                                    do_sample=False, max_new_tokens=NEW_TOKENS,
                                    min_new_tokens=NEW_TOKENS, pad_token_id=0)

    embeds = seen["inputs_embeds"][0]
    golden = {
        "made_by": f"transformers {transformers.__version__}, torch {torch.__version__}",
        "image_token_id": IMAGE, "boi_token_id": BOI, "eoi_token_id": EOI,
        "pixel_values_shape": list(pv.shape),
        "pixel_values": short(pv),
        "image_features_shape": list(feats.shape),
        "image_features": short(feats),
        "input_ids": PROMPT,
        "token_type_ids": tt[0].tolist(),
        "inputs_embeds_shape": list(embeds.shape),
        "inputs_embeds": short(embeds),
        "generated": gen[0, len(PROMPT):].tolist(),
        "generated_causal": gen_causal[0, len(PROMPT):].tolist(),
        "logits_shape": list(logits.shape),
        "logits": short(logits),
        "logits_causal": short(logits_causal),
    }
    with open(os.path.join(out, "golden.json"), "w") as f:
        json.dump(golden, f)
    gap = (logits - logits_causal).abs().max().item()
    print("features", feats.shape, "generated", golden["generated"], "causal", golden["generated_causal"],
          f"max |logits - logits_causal| = {gap:.4f}")


def main(root):
    tiny(os.path.join(root, "gemma3"))
    vision_896(os.path.join(root, "gemma3_vision_896"))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "fixtures"))
