"""Mixed precision for the inference stages (extract-cam, make-pseudo irn's boundary net, predict).

Training's ``--amp`` (:mod:`wsss.engine.loop`) is bfloat16 autocast on a GPU. Inference's ``--amp``
is float16 on a GPU: 10 mantissa bits against bfloat16's 7, so the maps move less (the benchmark
suite reports the largest deviation from float32 beside each AMP row, ``benchmarks/suite.py``; issue
#16 asks for 1e-3), and inference has no gradients to overflow. On a CPU it is bfloat16, the type
CPU autocast runs fastest (0.54-0.60x the float32 time for extract-cam and predict on this project's
2-core machine, whose CPU has bfloat16 instructions; others may gain nothing), with bfloat16's
coarser rounding.
What the methods compute on top of the network stays float32: AD-CAM's attention, Eq. 6-8
(:mod:`wsss.cam.adcam`, the Conformer's attention maps) and the random walk run with autocast
disabled, and the maps leave the network as float32.
"""

from __future__ import annotations

import contextlib

import torch


def inference_amp_dtype(device: torch.device) -> torch.dtype:
    """float16 on a GPU, bfloat16 elsewhere (see the module docstring)."""
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def inference_autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """Autocast to :func:`inference_amp_dtype` where ``enabled``, otherwise a no-op context."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=inference_amp_dtype(device))
