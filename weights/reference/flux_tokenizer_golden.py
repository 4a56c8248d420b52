"""Expected token ids for cogrs' FLUX tokenizers, from transformers' CLIPTokenizer and T5 tokenizer
called the way diffusers' FluxPipeline calls them (padding="max_length", truncation=True, 77 / 512),
built from the same files scripts/setup.d/diffusion-tokenizers fetches. CLIP ids are cross-checked
against open_clip's own SimpleTokenizer (the original CLIP tokenizer) where its ftfy/html clean-up
cannot differ. Writes predictors/fixtures/diffusion/tokenizers.json.

Run (after scripts/setup): /work/venv-flux/bin/python weights/reference/flux_tokenizer_golden.py
(transformers 5.24; ftfy and the open-clip-torch wheel only for the cross-check)
"""
import gzip
import io
import json
import os
import sys
import tempfile
import zipfile

from transformers import CLIPTokenizer, T5TokenizerFast

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", ".."))
CACHE = os.path.join(ROOT, ".cache", "diffusion")
OUT = os.path.join(ROOT, "predictors", "fixtures", "diffusion", "tokenizers.json")

PROMPTS = [
    "a photo of a cat",
    "",
    "GHIBSKY style, a cozy village at dusk with floating islands",
    "Cinematic shot of a 3D Model: the 'robot' isn't here, it's THERE!!",
    "  Digital\tart  of a café   in Zürich, naïve ÆSTHETIC  \n second line ",
    "pixel art 1024x768 sprite, 60fps, v2.5 — “quoted” … 😀🚀 東京の夜景 Привет мир",
    "<|endoftext|> inside a prompt, and <|startoftext|> too",
    # longer than CLIP's 77: diffusers keeps the first 75 tokens
    " ".join(f"word{i} and more" for i in range(60)),
    # longer than T5's 512
    "An extremely detailed painting of " + ", ".join(f"tiny creature number {i}" for i in range(150)),
]


def clip_files(tmp):
    """vocab.json / merges.txt as CLIP's SimpleTokenizer builds its vocabulary (and as HF ships it)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    chars = [chr(c) for c in cs]
    merges = open(os.path.join(CACHE, "clip", "bpe_simple_vocab_16e6.txt"), encoding="utf-8").read().split("\n")
    merges = merges[1 : 49152 - 256 - 2 + 1]
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    json.dump({v: i for i, v in enumerate(vocab)}, open(os.path.join(tmp, "vocab.json"), "w"))
    open(os.path.join(tmp, "merges.txt"), "w", encoding="utf-8").write("#version: 0.2\n" + "\n".join(merges) + "\n")


def open_clip_ids(prompts):
    """open_clip's SimpleTokenizer, loaded from the wheel without importing the package (torch-free path)."""
    whl = os.path.join(CACHE, "dl", "open_clip_torch-3.3.0-py3-none-any.whl")
    src = zipfile.ZipFile(whl).read("open_clip/tokenizer.py").decode()
    pkg = tempfile.mkdtemp()
    gz = os.path.join(pkg, "bpe_simple_vocab_16e6.txt.gz")  # where the module looks for it
    open(gz, "wb").write(zipfile.ZipFile(whl).read("open_clip/bpe_simple_vocab_16e6.txt.gz"))
    mod = {"__name__": "open_clip_tokenizer", "__file__": os.path.join(pkg, "tokenizer.py")}
    exec(compile(src, "open_clip/tokenizer.py", "exec"), mod)
    tok = mod["SimpleTokenizer"](bpe_path=gz)
    clean = lambda p: mod["html"].unescape(mod["html"].unescape(mod["ftfy"].fix_text(p)))
    return [(clean(p) == p, tok(p)[0].tolist()) for p in prompts]


with tempfile.TemporaryDirectory() as tmp:
    clip_files(tmp)
    clip = CLIPTokenizer(os.path.join(tmp, "vocab.json"), os.path.join(tmp, "merges.txt"), pad_token="<|endoftext|>")
t5 = T5TokenizerFast(tokenizer_file=os.path.join(CACHE, "t5", "tokenizer.json"))

cases = []
for p in PROMPTS:
    c = clip(p, padding="max_length", max_length=77, truncation=True).input_ids
    c_full = clip(p).input_ids
    t = t5(p, padding="max_length", max_length=512, truncation=True).input_ids
    t_full = t5(p).input_ids
    assert len(c) == 77 and len(t) == 512 and 0 not in t_full
    cases.append(dict(prompt=p, clip=c, clip_truncated=len(c_full) > 77,
                      t5=[i for i in t if i != 0],  # the rest is <pad> (0): T5 content ids are never 0
                      t5_truncated=len(t_full) > 512))

# open_clip pads with 0 after <|endoftext|> and lower-cases after ftfy + html.unescape (which
# transformers does not do: ftfy straightens curly quotes): compare the ids up to <|endoftext|>
# where that clean-up is the identity and the prompt holds no special-token text.
agree = 0
for case, (identity, oc) in zip(cases, open_clip_ids(PROMPTS)):
    if "<|" in case["prompt"] or not identity:
        continue
    n = oc.index(49407) + 1
    assert case["clip"][:n] == oc[:n], (case["prompt"], case["clip"][:n], oc[:n])
    agree += 1
print(f"open_clip agrees on {agree} prompts", file=sys.stderr)

import transformers
with open(OUT, "w") as f:
    json.dump(dict(transformers=transformers.__version__, cases=cases), f, ensure_ascii=False)
print("wrote", OUT, os.path.getsize(OUT), "bytes")
