"""The torch-free sentence encoder: onnxruntime + tokenizers over the built int8 model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from ._native import onnxruntime as ort
from .errors import ModelNotBuiltError
from .home import DEFAULT_MODEL_NAME, models_dir, read_current, sha256_file

TOKENIZER_FILE = "tokenizer.json"
MAX_TOKENS = 256


def configure_tokenizer(tokenizer: Tokenizer, max_tokens: int = MAX_TOKENS) -> Tokenizer:
    """The shipped tokenizer.json pads and truncates to 128; we keep 256 and pad per batch."""
    tokenizer.enable_truncation(max_length=max_tokens)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    return tokenizer


def length_batches(texts: list[str], batch_size: int) -> Iterator[list[int]]:
    """Indices of `texts` in batches of similar length, so padding wastes little work."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


@dataclass(frozen=True)
class Encoded:
    vectors: np.ndarray  # (n, dim) float32, unit norm
    truncated: list[bool]  # input longer than MAX_TOKENS word pieces


class Encoder:
    """Encodes a string or a list of strings to unit vectors."""

    def __init__(
        self,
        model_path: Path,
        tokenizer_path: Path,
        threads: int = 1,
        fingerprint: str = "",
        max_tokens: int = MAX_TOKENS,
    ) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(
            str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._tokenizer = configure_tokenizer(Tokenizer.from_file(str(tokenizer_path)), max_tokens)
        self.dim = int(self._session.get_outputs()[0].shape[-1])
        self.fingerprint = fingerprint
        self.max_tokens = max_tokens

    def encode_detailed(self, texts: list[str]) -> Encoded:
        if not texts:
            return Encoded(np.zeros((0, self.dim), dtype=np.float32), [])
        batch = self._tokenizer.encode_batch(texts)
        ids = np.asarray([e.ids for e in batch], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in batch], dtype=np.int64)
        (vectors,) = self._session.run(None, {"input_ids": ids, "attention_mask": mask})
        return Encoded(np.ascontiguousarray(vectors, dtype=np.float32), [bool(e.overflowing) for e in batch])

    def encode(self, texts: str | list[str], batch_size: int = 64) -> np.ndarray:
        """One string gives shape (dim,); a list gives (n, dim)."""
        if isinstance(texts, str):
            return self.encode_detailed([texts]).vectors[0]
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for idx in length_batches(texts, batch_size):
            out[idx] = self.encode_detailed([texts[i] for i in idx]).vectors
        return out


def current_model_dir(home: Path | None = None, name: str = DEFAULT_MODEL_NAME) -> Path:
    root = models_dir(home) / name
    folder = read_current(root)
    if folder is None:
        raise ModelNotBuiltError(
            f"no built encoder under {root}. Build it once with:\n"
            "    pip install 'edgecache[build]' && edgecache model build\n"
            "(set EDGECACHE_HOME to choose where it goes)"
        )
    return folder


def load_encoder(
    home: Path | None = None,
    name: str = DEFAULT_MODEL_NAME,
    threads: int = 1,
    verify: bool = True,
) -> Encoder:
    """Load the built model; with verify, its content hash must match its manifest."""
    folder = current_model_dir(home, name)
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelNotBuiltError(
            f"the built model in {folder} is incomplete ({exc}); rebuild: edgecache model build"
        ) from exc
    model = folder / "model.onnx"
    if verify and (not model.is_file() or sha256_file(model) != manifest["sha256"]):
        raise ModelNotBuiltError(f"{model} does not match its manifest hash; rebuild: edgecache model build")
    return Encoder(model, folder / TOKENIZER_FILE, threads=threads, fingerprint=manifest["sha256"])
