#!/usr/bin/env python3
"""Makes the tiny random checkpoints in weights/fixtures/ and their transformers goldens.

Each fixture is a full Hugging Face folder (config.json, model.safetensors, generation_config.json)
of one architecture with every structural feature the compiler handles, but small dimensions:
- llama:   GQA 4/2, tied embeddings, llama3 rope scaling (small original context so it matters), bf16 weights
- smollm3: GQA 4/1, NoPE on layer 3 ((i+1) % 4 == 0), tied embeddings, bf16 weights
- phi3:    GQA 4/2, fused qkv_proj and gate_up_proj, untied lm_head, f16 weights
- phi3_sliding: phi3 with sliding_window 5 (shorter than the golden sequence)

Weights are drawn with a larger std than the default init so logits are far from uniform and greedy
decoding has no near-ties; they are stored in bf16/f16 (the values are exactly representable) and
the reference runs in fp32. golden.json holds the prompt, the greedy continuation from
`generate(do_sample=False)`, and fp32 logits of one forward pass over prompt + continuation (rows
0..P-1 are the prefill, row P-1+t the logits that chose generated token t).

Run: python3 -m venv /work/venv-ref && /work/venv-ref/bin/pip install torch transformers safetensors
     /work/venv-ref/bin/python weights/reference/make_goldens.py weights/fixtures
"""
import json
import os
import sys

import torch
import transformers
from transformers import (LlamaConfig, LlamaForCausalLM, Phi3Config, Phi3ForCausalLM,
                          SmolLM3Config, SmolLM3ForCausalLM)

PROMPT = [1, 17, 93, 44, 250, 8, 131]
NEW_TOKENS = 8
COMMON = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_attention_heads=4,
              max_position_embeddings=128, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
              pad_token_id=0, hidden_act="silu")


def fixtures():
    yield "llama", LlamaForCausalLM, LlamaConfig(
        **COMMON, num_hidden_layers=2, num_key_value_heads=2, tie_word_embeddings=True,
        rope_theta=10000.0,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=32)), torch.bfloat16
    yield "smollm3", SmolLM3ForCausalLM, SmolLM3Config(
        **COMMON, num_hidden_layers=4, num_key_value_heads=1, tie_word_embeddings=True,
        rope_theta=50000.0, no_rope_layer_interval=4), torch.bfloat16
    yield "phi3", Phi3ForCausalLM, Phi3Config(
        **COMMON, num_hidden_layers=2, num_key_value_heads=2, tie_word_embeddings=False,
        rope_theta=10000.0, sliding_window=None), torch.float16
    # Phi-3 with a sliding window shorter than the golden sequence (14 tokens), so the window
    # (GroupQueryAttention's local_window_size) decides which keys each query sees.
    yield "phi3_sliding", Phi3ForCausalLM, Phi3Config(
        **COMMON, num_hidden_layers=2, num_key_value_heads=2, tie_word_embeddings=False,
        rope_theta=10000.0, sliding_window=5), torch.float16


def main(out_root):
    torch.manual_seed(1234)
    for name, cls, cfg, store_dtype in fixtures():
        model = cls(cfg).eval()
        with torch.no_grad():
            for pname, p in sorted(model.named_parameters()):
                if "norm" in pname:
                    p.copy_(1.0 + 0.1 * torch.randn_like(p))
                else:
                    p.copy_(0.15 * torch.randn_like(p))
                # Round through the storage dtype so the fp32 reference sees the stored values.
                p.copy_(p.to(store_dtype).to(torch.float32))
        out = os.path.join(out_root, name)
        os.makedirs(out, exist_ok=True)
        model.to(store_dtype).save_pretrained(out, safe_serialization=True)
        # The reference is the committed folder loaded fresh in fp32: casting the live model back
        # would keep buffers (rotary inv_freq) rounded to the storage dtype.
        model = cls.from_pretrained(out, dtype=torch.float32).eval()
        ids = torch.tensor([PROMPT])
        with torch.no_grad():
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                                 pad_token_id=0)
            full = gen[:, :-1]
            logits = model(full, attention_mask=torch.ones_like(full)).logits[0]
        golden = {
            "made_by": f"transformers {transformers.__version__}, torch {torch.__version__}",
            "prompt": PROMPT,
            "generated": gen[0, len(PROMPT):].tolist(),
            "logits_shape": list(logits.shape),
            "logits": [float(x) for x in logits.reshape(-1).tolist()],
        }
        with open(os.path.join(out, "golden.json"), "w") as f:
            json.dump(golden, f)
        print(name, "generated", golden["generated"])


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "fixtures"))
