#!/usr/bin/env python3
"""Makes weights/fixtures/gemma3_text/: a tiny random Gemma3ForCausalLM and its transformers goldens.

The model has every structural feature the Gemma 3 text compiler handles, at small dimensions:
6 layers (5 sliding-window layers then one global layer, transformers' default pattern), a sliding
window of 4 (shorter than the golden sequences, so it decides what each query sees), GQA 4/2,
head_dim 16 with hidden 48 (so q_proj's width 64 differs from hidden), query_pre_attn_scalar 24
(not head_dim), q/k norms and the four per-layer norms with non-trivial weights, global RoPE
theta 1e6 with linear scaling 8 and local theta 1e4, GELU-tanh MLP, tied embeddings and a final
logit softcap of 15 (Gemma 2 had one; Gemma 3 configs set it to null, the compiler handles both).
`image_token_index` (256, outside the 256-token vocabulary, like an image token the text model
cannot embed) is added to config.json, as Gemma3ForConditionalGeneration's outer config carries it.

Weights are drawn with a larger std than the default init (embeddings larger still, so the
logits have no near-ties; norm weights around 0: Gemma's RMSNorm
multiplies by 1 + w) and stored in bf16 (exactly representable); the reference runs in fp32 from the
saved folder. golden.json:
- `prompt`, `generated` (greedy, `generate(do_sample=False)`), `logits_shape`, `logits`: fp32 logits of
  one forward pass over prompt + generated[:-1] (row P-1+t chose generated token t);
- `embeds`: the multimodal merge as Gemma3Model does it: `input_ids` holding the image token at some
  positions, `image_features` (random rows, [n, hidden] flattened), the merged `inputs_embeds`
  (embed_tokens of the ids with image tokens replaced by 0, then `masked_scatter` of the features),
  `generated` (greedy from those embeds) and `logits` over merged prompt + embedded generated[:-1];
- `embeds_bidirectional`: the same merged prompt with `token_type_ids` (1 at image tokens), as
  Gemma3ForConditionalGeneration runs it: tokens of one image attend to each other in both
  directions (transformers' `create_masks_for_vision_model`), the rest causal; greedy tokens and
  logits over prompt + generated[:-1];
- `rtn8_logits`: the first case's logits with every decoder linear replaced by its round-to-nearest
  8-bit dequantisation as `--quant rtn8` stores it (the int8 build's reference).

Run: /work/venv-ref/bin/python weights/reference/gemma3_text_golden.py [weights/fixtures/gemma3_text]
"""
import json
import os
import sys

import torch
import transformers
from transformers import Gemma3ForCausalLM, Gemma3TextConfig
from transformers.models.gemma3.modeling_gemma3 import (create_masks_for_vision_model,
                                                        get_block_sequence_ids_for_mask)

PROMPT = [2, 17, 93, 44, 250, 8, 131, 77, 5]
NEW_TOKENS = 8
IMAGE_TOKEN = 256  # == vocab_size: out of range, as Gemma3Model's OOV branch expects
EMBED_IDS = [2, 40, IMAGE_TOKEN, IMAGE_TOKEN, IMAGE_TOKEN, 61, 9, IMAGE_TOKEN, IMAGE_TOKEN, 120, 33]
EMBED_NEW = 4
SEED = 13  # chosen for top-1/top-2 margins ≥ 0.19 at every greedy step (int8 test)


def config():
    return Gemma3TextConfig(
        vocab_size=256, hidden_size=48, intermediate_size=64, num_hidden_layers=6,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24,
        sliding_window=4, max_position_embeddings=128, rms_norm_eps=1e-6,
        rope_scaling=dict(rope_type="linear", factor=8.0), rope_theta=1_000_000.0,
        rope_local_base_freq=10_000.0, final_logit_softcapping=15.0, attn_logit_softcapping=None,
        tie_word_embeddings=True, bos_token_id=2, eos_token_id=1, pad_token_id=0,
        hidden_activation="gelu_pytorch_tanh", attn_implementation="eager")


def rtn8(w, block=32):
    """What `cogrs weights build --quant rtn8` stores, dequantised (weights/src/quant/rtn.rs):
    symmetric 8-bit per block of 32 along the input axis (zero-padded), scale = the block's signed
    extreme / -128, q = clamp(round(w · (1 / scale)) + 128, 0, 255)."""
    n, k = w.shape
    kp = -(-k // block) * block
    b = torch.nn.functional.pad(w, (0, kp - k)).reshape(n, kp // block, block)
    s = b.gather(-1, b.abs().argmax(-1, keepdim=True)) / -128.0
    inv = torch.where(s == 0, torch.zeros_like(s), 1.0 / s)
    x = b * inv
    # Rust's f32::round: halves away from zero (torch.round goes to even; ties are common with
    # bf16 weights).
    r = torch.where((x - x.trunc()).abs() == 0.5, x.trunc() + x.sign(), torch.round(x))
    q = torch.clamp(r + 128, 0, 255)
    return ((q - 128) * s).reshape(n, kp)[:, :k]


def flat(t):
    return [float(x) for x in t.reshape(-1).tolist()]


def main(out):
    torch.manual_seed(SEED)
    model = Gemma3ForCausalLM(config()).eval()
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "post_" in name:
                # Post-attention/feed-forward norms scale what each block adds to the residual
                # stream: large, so the blocks outweigh the (√hidden-scaled) token embedding and
                # the tied head does not just echo the input token.
                p.copy_(2.0 + 0.3 * torch.randn_like(p))
            elif "norm" in name:
                p.copy_(0.2 * torch.randn_like(p))
            elif "embed_tokens" in name:
                # Larger, so that the tied head's logits are well separated (no near-ties for greedy).
                p.copy_(0.4 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
            p.copy_(p.to(torch.bfloat16).to(torch.float32))
    os.makedirs(out, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    cfg_path = os.path.join(out, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["image_token_index"] = IMAGE_TOKEN
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)

    model = Gemma3ForCausalLM.from_pretrained(out, dtype=torch.float32,
                                              attn_implementation="eager").eval()
    assert model.config.layer_types.count("full_attention") == 1
    golden = {"made_by": f"transformers {transformers.__version__}, torch {torch.__version__}"}
    with torch.no_grad():
        ids = torch.tensor([PROMPT])
        gen = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, pad_token_id=0)
        full = gen[:, :-1]
        logits = model(full, attention_mask=torch.ones_like(full)).logits[0]
        golden.update(prompt=PROMPT, generated=gen[0, len(PROMPT):].tolist(),
                      logits_shape=list(logits.shape), logits=flat(logits))

        # The merge, as Gemma3Model.forward does it for an out-of-vocabulary image token.
        eids = torch.tensor([EMBED_IDS])
        mask = eids == IMAGE_TOKEN
        n = int(mask.sum())
        feats = 2.0 * torch.randn(n, model.config.hidden_size)
        llm_ids = eids.clone()
        llm_ids[mask] = 0
        embeds = model.get_input_embeddings()(llm_ids)
        merged = embeds.masked_scatter(mask.unsqueeze(-1), feats)
        am = torch.ones_like(eids)
        egen = model.generate(inputs_embeds=merged, attention_mask=am, do_sample=False,
                              max_new_tokens=EMBED_NEW, min_new_tokens=EMBED_NEW, pad_token_id=0)
        tail = model.get_input_embeddings()(egen[:, :-1])
        both = torch.cat([merged, tail], dim=1)
        elogits = model(inputs_embeds=both, attention_mask=torch.ones(both.shape[:2])).logits[0]
        # The same merged prompt as Gemma3ForConditionalGeneration runs it when the processor's
        # token_type_ids mark the image tokens: each image's tokens attend to each other in both
        # directions (transformers' own create_masks_for_vision_model), everything else causal.
        # Greedy continuation by full forward passes (the new tokens are text, type 0).
        def vision_logits(embeds, types):
            blocks = get_block_sequence_ids_for_mask(types)
            masks = create_masks_for_vision_model(
                config=model.config, inputs_embeds=embeds, attention_mask=torch.ones(types.shape),
                cache=None, position_ids=torch.arange(types.shape[1]).unsqueeze(0),
                block_sequence_ids=blocks)
            return model(inputs_embeds=embeds, attention_mask=masks).logits[0]
        seq, types, bgen = merged, mask.long(), []
        for _ in range(EMBED_NEW):
            nxt = int(vision_logits(seq, types)[-1].argmax())
            bgen.append(nxt)
            seq = torch.cat([seq, model.get_input_embeddings()(torch.tensor([[nxt]]))], dim=1)
            types = torch.cat([types, torch.zeros(1, 1, dtype=torch.long)], dim=1)
        blog = vision_logits(seq[:, :-1], types[:, :-1])
        golden["embeds_bidirectional"] = {
            "token_type_ids": mask.long()[0].tolist(), "generated": bgen,
            "logits_shape": list(blog.shape), "logits": flat(blog),
        }
        golden["embeds"] = {
            "image_token_index": IMAGE_TOKEN, "input_ids": EMBED_IDS,
            "image_features_shape": list(feats.shape), "image_features": flat(feats),
            "inputs_embeds_shape": list(merged.shape[1:]), "inputs_embeds": flat(merged[0]),
            "generated": egen[0].tolist(),
            "logits_shape": list(elogits.shape), "logits": flat(elogits),
        }
        # The int8 weight-only build's reference: every decoder linear (not the tied head)
        # replaced by its RTN 8-bit dequantisation, same tokens as the fp32 rows above.
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear) and name != "lm_head":
                mod.weight.copy_(rtn8(mod.weight))
        golden["rtn8_logits"] = flat(model(full, attention_mask=torch.ones_like(full)).logits[0])
    with open(os.path.join(out, "golden.json"), "w") as f:
        json.dump(golden, f)
    print("generated", golden["generated"], "from embeds", golden["embeds"]["generated"])
    print("logit range", float(logits.min()), float(logits.max()))
    print("bidirectional image attention: generated", golden["embeds_bidirectional"]["generated"])
    for key, d in (("prompt", golden), ("embeds", golden["embeds"]),
                   ("embeds_bidirectional", golden["embeds_bidirectional"])):
        top = torch.tensor(d["logits"]).reshape(d["logits_shape"]).topk(2, dim=-1).values
        print(key, "smallest top-1/top-2 margin", float((top[:, 0] - top[:, 1]).min()))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else
         os.path.join(os.path.dirname(__file__), "..", "fixtures", "gemma3_text"))
