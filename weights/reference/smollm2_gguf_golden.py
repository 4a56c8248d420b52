#!/usr/bin/env python3
"""Golden for the real SmolLM2-135M-Instruct GGUF: transformers loads the same Q4_1 file
(dequantising it and undoing llama.cpp's Q/K permutation itself), runs the ChatML prompt in fp32,
and records the prompt ids, the top-32 logits (ids and values) at every prompt position's last
row, and a 16-token greedy continuation. Small enough to commit (weights/fixtures/smollm2_gguf.json).

Run: /work/venv-ref/bin/pip install torch transformers gguf
     /work/venv-ref/bin/python weights/reference/smollm2_gguf_golden.py \
         .cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf weights/fixtures/smollm2_gguf.json
"""
import json
import os
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

gguf_path, out = sys.argv[1], sys.argv[2]
folder, name = os.path.dirname(os.path.abspath(gguf_path)), os.path.basename(gguf_path)
tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
messages = [{"role": "user", "content": "What is the capital of France?"}]
prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
ids = tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids
with torch.no_grad():
    last = model(ids).logits[0, -1]
    gen = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=16)
top = torch.topk(last, 32)
golden = {
    "made_by": f"transformers {transformers.__version__}, torch {torch.__version__}",
    "prompt": prompt,
    "prompt_ids": ids[0].tolist(),
    "top_ids": top.indices.tolist(),
    "top_logits": [float(x) for x in top.values.tolist()],
    "generated": gen[0, ids.shape[1]:].tolist(),
    "generated_text": tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True),
}
with open(out, "w") as f:
    json.dump(golden, f, indent=1)
print(golden["generated_text"])
