"""Goldens for cogrs' Gemma 3 image preprocessing (predictors/src/engine/vision/).

Makes the small fixture images in predictors/fixtures/vision/ (only those missing: the committed
files are the reference) and, for each, what transformers' Gemma 3 image processor gives:
`Gemma3ImageProcessorPil` (transformers 5, PIL/NumPy backend, no torch) configured as
google/gemma-3-4b-it's preprocessor_config.json: 896x896, BILINEAR, rescale 1/255, mean = std = 0.5,
convert to RGB (transparency composited onto white), no pan-and-scan. Images are opened as
transformers' `load_image` does (PIL, then `ImageOps.exif_transpose`), but handed to the processor
with their alpha channel, so that the processor's own RGB conversion applies.

Each golden (golden/<file>.json): the shape, the sha256 of pixel_values as little-endian f32 (CHW),
and values at 1024 fixed positions (for a readable failure, and for lossy formats, whose decoders
may differ by a level or two).

    python3 -m venv /work/venv-gemma && /work/venv-gemma/bin/pip install transformers pillow numpy
    /work/venv-gemma/bin/python weights/reference/gemma3_vision_golden.py
"""

import hashlib
import io
import json
import pathlib

import numpy as np
import transformers
from PIL import Image, ImageOps
from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIX = ROOT / "predictors" / "fixtures" / "vision"


def pattern(w, h, f):
    a = np.zeros((h, w, 3), np.uint8)
    for y in range(h):
        for x in range(w):
            a[y, x] = f(x, y)
    return a


def asymmetric(w, h):
    """A red block top-left, a green bar on the right, a blue ramp: wrong orientation shows."""
    def f(x, y):
        if x < w // 3 and y < h // 3:
            return (230, 20, 20)
        if x > w - 6:
            return (20, 200, 40)
        return (40, 40, (y * 255) // max(h - 1, 1))
    return pattern(w, h, f)


def make_fixtures():
    FIX.mkdir(parents=True, exist_ok=True)
    out = {}
    out["rgb_61x37.png"] = lambda p: Image.fromarray(
        pattern(61, 37, lambda x, y: (x * 4, y * 6, (x * y) % 256))).save(p)
    def rgba(p):
        a = np.zeros((30, 40, 4), np.uint8)
        for y in range(30):
            for x in range(40):
                a[y, x] = (x * 6, 255 - y * 8, (x * 13 + y * 7) % 256, (x * 7 + y * 3) % 256)
        Image.fromarray(a, "RGBA").save(p)
    out["rgba_40x30.png"] = rgba
    out["down_1000x700.png"] = lambda p: Image.fromarray(pattern(
        1000, 700, lambda x, y: ((x // 7 * 13) % 256, (y // 5 * 29) % 256, ((x + y) // 11 * 7) % 256))).save(p, optimize=True)
    out["gray_50x20.png"] = lambda p: Image.fromarray(
        pattern(50, 20, lambda x, y: ((x * 5 + y * 3) % 256,) * 3)[:, :, 0], "L").save(p)
    def jpeg(p):
        # Stored 32 wide x 48 tall; EXIF orientation 6 says "rotate 90 degrees clockwise to display".
        img = Image.fromarray(asymmetric(32, 48))
        exif = Image.Exif()
        exif[0x0112] = 6
        img.save(p, quality=95, subsampling=0, exif=exif.tobytes())
    out["orient6_32x48.jpg"] = jpeg
    out["lossless_50x40.webp"] = lambda p: Image.fromarray(asymmetric(50, 40)).save(p, lossless=True)
    out["lossy_50x40.webp"] = lambda p: Image.fromarray(asymmetric(50, 40)).save(p, quality=90)
    def gif(p):
        f0 = Image.fromarray(asymmetric(33, 21)).quantize(colors=16, dither=Image.Dither.NONE)
        f1 = Image.fromarray(np.full((21, 33, 3), 128, np.uint8)).quantize(colors=4)
        # Palette index 0 transparent in the first frame: composited onto white.
        f0.save(p, save_all=True, append_images=[f1], transparency=0, duration=100, loop=0)
    out["anim_33x21.gif"] = gif
    # Strong downscale in both axes (wider filter), and a width already at 896 (vertical pass only).
    out["down_2000x1800.png"] = lambda p: Image.fromarray(pattern(
        2000, 1800, lambda x, y: ((x // 9 * 31) % 256, (y // 13 * 17) % 256, ((x * 3 + y) // 23 * 11) % 256))).save(p, optimize=True)
    out["tall_896x500.png"] = lambda p: Image.fromarray(pattern(
        896, 500, lambda x, y: ((x // 3) % 256, (y // 2) % 256, 90))).save(p, optimize=True)
    # Every EXIF orientation (2..8), losslessly, so that each transpose is checked bit for bit.
    for o in range(2, 9):
        def oriented(p, o=o):
            exif = Image.Exif()
            exif[0x0112] = o
            Image.fromarray(asymmetric(24, 16)).save(p, exif=exif.tobytes())
        out[f"orient{o}_24x16.png"] = oriented
    # An animated lossless WebP (first frame used) and a GIF whose first frame covers only part of
    # its canvas, at an offset (the rest is the transparent background: white after compositing).
    def anim_webp(p):
        f0 = Image.fromarray(asymmetric(40, 30))
        f1 = Image.fromarray(np.full((30, 40, 3), 77, np.uint8))
        f0.save(p, save_all=True, append_images=[f1], lossless=True, duration=100, loop=0)
    out["anim_40x30.webp"] = anim_webp
    def gif_offset(p):
        # GIF89a, 40x30 canvas, one 20x10 frame at (12, 9): written by hand, since encoders crop
        # frames to the canvas themselves.
        frame = Image.fromarray(asymmetric(20, 10)).quantize(colors=8, dither=Image.Dither.NONE)
        buf = io.BytesIO()
        frame.save(buf, format="GIF")
        data = buf.getvalue()
        # Reuse Pillow's LZW data for the frame: find its image descriptor (0x2C) after the header.
        i = data.index(b"\x2c", 13 + 3 * 2 ** ((data[10] & 7) + 1))
        lzw = data[i + 10:]
        gct_bits = data[10] & 7
        gct = data[13:13 + 3 * 2 ** (gct_bits + 1)]
        hdr = b"GIF89a" + (40).to_bytes(2, "little") + (30).to_bytes(2, "little") + bytes([0x80 | gct_bits, 0, 0]) + gct
        gce = bytes([0x21, 0xF9, 4, 1, 0, 0, len(gct) // 3 - 1, 0])  # last palette entry transparent
        desc = bytes([0x2C]) + (12).to_bytes(2, "little") + (9).to_bytes(2, "little") + (20).to_bytes(2, "little") + (10).to_bytes(2, "little") + bytes([0])
        pathlib.Path(p).write_bytes(hdr + gce + desc + lzw)
    out["offset_40x30.gif"] = gif_offset
    out["gray_40x30.jpg"] = lambda p: Image.fromarray(asymmetric(40, 30)).convert("L").save(p, quality=95)
    for name, make in out.items():
        if not (FIX / name).exists():
            make(FIX / name)
    return list(out)


def open_like_load_image(path):
    img = Image.open(path)
    return ImageOps.exif_transpose(img)


def main():
    names = make_fixtures()
    proc = Gemma3ImageProcessorPil(
        size={"height": 896, "width": 896},
        resample=Image.Resampling.BILINEAR,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        do_convert_rgb=True,
        do_pan_and_scan=False,
    )
    rng = np.random.RandomState(0)
    pos = np.stack([rng.randint(0, 3, 1024), rng.randint(0, 896, 1024), rng.randint(0, 896, 1024)], 1)
    (FIX / "golden").mkdir(exist_ok=True)
    for name in names:
        img = open_like_load_image(FIX / name)
        pv = proc(images=img, return_tensors="np")["pixel_values"][0].astype(np.float32)
        assert pv.shape == (3, 896, 896), pv.shape
        # pixel_values are exactly (u8/255 - 0.5)/0.5 of a resized uint8 image: check it.
        u8 = np.round((pv * 0.5 + 0.5) * 255).astype(np.uint8)
        again = ((u8.astype(np.float64) * (1 / 255)).astype(np.float32) - np.float32(0.5)) / np.float32(0.5)
        assert np.array_equal(again, pv)
        golden = {
            "file": name,
            "transformers": transformers.__version__,
            "shape": list(pv.shape),
            "sha256_f32le": hashlib.sha256(pv.astype("<f4").tobytes()).hexdigest(),
            "mean": float(pv.astype(np.float64).mean()),
            "samples": [[int(c), int(y), int(x), float(pv[c, y, x])] for c, y, x in pos],
        }
        (FIX / "golden" / f"{name}.json").write_text(json.dumps(golden) + "\n")
        print(name, img.mode, img.size, golden["sha256_f32le"][:16], round(golden["mean"], 6))


if __name__ == "__main__":
    main()
