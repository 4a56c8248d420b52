#!/usr/bin/env python3
"""Cross-check of three rows of BENCHMARKS.md's Gemma-3-270M perplexity table
(weights/examples/gemma3_ppl.rs) with transformers' own GGUF loader and fp32 eager PyTorch: the dense
model, 25 % magnitude pruning and 25 % structured (row, by L2 norm) pruning, both per tensor on the
built-in filter map's tensors (q/k/v/up/down projections), over weights/fixtures/ppl_text.txt.

Run: /work/venv-ref/bin/python weights/reference/gemma3_ppl_check.py \
         .cache/gemma3-270m/gemma-3-270m-q4_k_m.gguf weights/fixtures/ppl_text.txt
Printed (transformers 5.24.0, torch 2.15 CPU): dense 2.08077, magnitude 20.751, structured 63839030.
"""
import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

MAP = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]


def main(path, text_path):
    torch.set_num_threads(1)
    d, f = os.path.split(os.path.abspath(path))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
    ids = tok(open(text_path).read(), return_tensors="pt").input_ids
    dense = {k: v.clone() for k, v in model.state_dict().items()}

    def ppl():
        with torch.no_grad():
            logits = model(ids).logits[0].double()
        lp = torch.log_softmax(logits, -1)[:-1].gather(1, ids[0, 1:, None])[:, 0]
        return float(torch.exp(-lp.mean()))

    def pruned(how):
        model.load_state_dict(dense)
        for n, p in model.named_parameters():
            if any(m in n for m in MAP):
                w = p.data
                if how == "magnitude":
                    thr = w.abs().flatten().kthvalue(int(round(w.numel() * 0.25))).values
                    w[w.abs() <= thr] = 0
                else:
                    w[w.norm(dim=1).argsort()[: int(round(w.shape[0] * 0.25))]] = 0
        return ppl()

    print(f"{ids.shape[1]} tokens")
    print("dense", ppl())
    print("magnitude 25 % (map)", pruned("magnitude"))
    print("structured 25 % (map)", pruned("structured"))


if __name__ == "__main__":
    main(*sys.argv[1:])
