"""Pass 1's embedding stage (a Ray Data actor pool) and the probe images of its self-check."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..openclip import OnnxImageBackend, normalize_pixels, register_model_config
from .errors import BatchJobError


class Embedder:
    """The actor-pool stage: the image tower loaded once per actor, checked against the driver's
    embedding of a probe batch so that a tower that does not reproduce the driver's model (wrong
    weights, a broken export) fails the job instead of writing wrong labels."""

    def __init__(
        self,
        engine: dict[str, Any],
        transform: dict[str, Any],
        probe: np.ndarray,
        expected: np.ndarray,
        threads: int,
    ) -> None:
        import ray

        self.transform = transform
        payload = ray.get(engine["ref"])
        if engine["kind"] == "torch":
            self._embed = self._torch_tower(engine, payload, threads)
        else:
            self._embed = self._onnx_tower(payload, threads)
        got = self._embed(normalize_pixels(probe, transform))
        cos = float((got * expected).sum(axis=1).min())
        if not cos > 0.999:
            raise BatchJobError(
                f"the {engine['kind']} image tower disagrees with the driver's model (cos {cos})"
            )

    @staticmethod
    def _torch_tower(engine: dict[str, Any], state: dict[str, np.ndarray], threads: int) -> Callable:
        import open_clip
        import torch

        torch.set_num_threads(threads)
        register_model_config(engine["model_name"], engine["config"])  # tiny / custom configs
        model = open_clip.create_model(engine["model_name"], pretrained=None)
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
        model.eval()

        def embed(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                f = model.encode_image(torch.from_numpy(x)).float()
                return torch.nn.functional.normalize(f, dim=-1).numpy()

        return embed

    @staticmethod
    def _onnx_tower(blob: bytes, threads: int) -> Callable:
        # Only run_pixels is used: the stage normalises the pixels itself (normalize_pixels).
        return OnnxImageBackend(blob, preprocess=np.asarray, threads=threads).run_pixels

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        errors = np.asarray(batch["error"], dtype=object)
        ok = np.flatnonzero(errors == "")
        out = None
        if len(ok):
            out = self._embed(normalize_pixels(np.asarray(batch["pixels"])[ok], self.transform))
        dim = out.shape[1] if out is not None else self._dim()
        emb = np.zeros((len(errors), dim), dtype=np.float32)
        if out is not None:
            emb[ok] = out
        busy = np.full(len(errors), (time.perf_counter() - t0) / max(1, len(errors)))
        return {
            "path": batch["path"],
            "embedding": emb,
            "error": errors,
            "read_s": batch["read_s"],
            "embed_s": busy,
        }

    def _dim(self) -> int:
        h, w = self.transform["crop"]
        return int(self._embed(normalize_pixels(np.zeros((1, h, w, 3), np.uint8), self.transform)).shape[1])


def probe_images(transform: dict[str, Any]) -> np.ndarray:
    """Two fixed uint8 images (a gradient and its mirror) for the actors' self-check."""
    h, w = transform["crop"]
    g = np.linspace(0, 255, h * w * 3).reshape(h, w, 3).astype(np.uint8)
    return np.stack([g, g[::-1, ::-1]])
