"""The driver's model: loading it and packing its image tower for the embedding actors."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .config import BatchJobConfig


def load_backend(config: BatchJobConfig) -> Any:
    from ..openclip import OpenCLIPBackend

    if config.model == "tiny":
        return OpenCLIPBackend.tiny(seed=config.seed)
    return OpenCLIPBackend.from_pretrained(config.model, config.checkpoint or config.pretrained)


def state_arrays(model: Any) -> dict[str, np.ndarray]:
    import torch

    out = {}
    for name, t in model.state_dict().items():
        t = t.detach().cpu()
        if t.dtype == torch.bfloat16:  # numpy has no bfloat16
            t = t.float()
        out[name] = t.numpy()
    return out


def onnx_bytes(backend: Any, onnx_path: str | None, progress: Callable[[str], None]) -> bytes:
    """The exported image tower: reused from `onnx_path` when it was exported from these
    weights (fingerprint in its metadata), else exported (and numerically checked) anew."""
    from ..openclip import OnnxImageBackend, export_image_onnx

    if onnx_path and Path(onnx_path).is_file():
        try:
            existing = OnnxImageBackend(onnx_path).fingerprint
        except Exception as exc:  # an unreadable old export is simply replaced
            existing = f"unreadable ({exc})"
        if existing == backend.fingerprint:
            progress(f"reusing the ONNX image tower {onnx_path}")
            return Path(onnx_path).read_bytes()
        progress(f"re-exporting {onnx_path}: it holds other weights or does not load")
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(onnx_path) if onnx_path else Path(tmp) / "image_tower.onnx"
        t = time.perf_counter()
        report = export_image_onnx(backend, target)
        progress(
            f"exported the image tower to ONNX in {time.perf_counter() - t:.1f} s "
            f"(min cosine vs torch {report.min_cosine:.6f})"
        )
        return target.read_bytes()
