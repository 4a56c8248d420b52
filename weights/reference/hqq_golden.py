#!/usr/bin/env python3
"""Golden for cog-weights' HQQ: ONNX Runtime's own HQQWeightOnlyQuantizer.quantize_internal (the
procedure the issue names) on a fixed [24, 192] weight, group 64, 4 and 8 bits, on CPU (float32).
Writes weights/fixtures/hqq_golden.json: the weight, and per bit width the integer codes, scales
and float zero points.

Run: /work/venv-ref/bin/pip install torch onnx onnx_ir .cache/onnxruntime/wheel/onnxruntime-1.31.1-*.whl
     /work/venv-ref/bin/python weights/reference/hqq_golden.py weights/fixtures/hqq_golden.json
"""
import json
import sys

import onnxruntime
import torch
from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantConfig, HQQWeightOnlyQuantizer

torch.manual_seed(7)
w = torch.randn(24, 192) * 0.05
w[::5, ::37] *= 8.0  # outliers, so blocks have uneven ranges
golden = {"made_by": f"onnxruntime {onnxruntime.__version__}, torch {torch.__version__}",
          "shape": list(w.shape), "weight": w.reshape(-1).tolist(), "group": 64}
for bits in (4, 8):
    quantizer = HQQWeightOnlyQuantizer(HQQWeightOnlyQuantConfig(block_size=64, bits=bits))
    # The quantizer transposes ONNX's [K, N] MatMul weight to [N, K] before this call.
    q, scale, zero = quantizer.quantize_internal(w.clone(), bits=bits, group_size=64)
    golden[f"bits{bits}"] = {"q": q.reshape(-1).tolist(), "scale": scale.reshape(-1).tolist(),
                             "zero": zero.reshape(-1).tolist()}
with open(sys.argv[1], "w") as f:
    json.dump(golden, f)
