"""The torch-free sentence encoder: onnxruntime + tokenizers over the built int8 model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Encoding, Tokenizer

from ._native import onnxruntime as ort
from .errors import ModelNotBuiltError
from .home import DEFAULT_MODEL_NAME, models_dir, read_current, sha256_file

TOKENIZER_FILE = "tokenizer.json"
MAX_TOKENS = 256


def configure_tokenizer(tokenizer: Tokenizer, max_tokens: int = MAX_TOKENS) -> Tokenizer:
    """The shipped tokenizer.json pads and truncates to 128; we keep 256 and never pad (each
    text runs through the graph on its own, see `Encoder.encode_detailed`)."""
    tokenizer.enable_truncation(max_length=max_tokens)
    tokenizer.no_padding()
    return tokenizer


def batches(count: int, size: int) -> Iterator[list[int]]:
    """Indices 0..count-1 in consecutive lists of at most `size`."""
    for start in range(0, count, size):
        yield list(range(start, min(start + size, count)))


@dataclass(frozen=True)
class Encoded:
    vectors: np.ndarray  # (n, dim) float32, unit norm
    truncated: list[bool]  # input longer than MAX_TOKENS word pieces
    unseen: list[tuple[str, ...]]  # per text, the spans the model cannot see (`Encoder.unseen`)


# The build leaves residual adds as Add + LayerNormalization because the fused kernel is the
# slower one on one query; onnxruntime would fuse them again when it loads the graph.
UNFUSED_AT_LOAD = ("SkipLayerNormFusion",)


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
            str(model_path),
            sess_options=options,
            providers=["CPUExecutionProvider"],
            disabled_optimizers=list(UNFUSED_AT_LOAD),
        )
        try:
            tokenizer = Tokenizer.from_file(str(tokenizer_path))
        except Exception as exc:  # tokenizers raises a bare Exception, without the path
            raise ModelNotBuiltError(
                f"cannot read the tokenizer {tokenizer_path} ({exc}); rebuild: edgecache model build"
            ) from exc
        self._tokenizer = configure_tokenizer(tokenizer, max_tokens)
        self.dim = int(self._session.get_outputs()[0].shape[-1])
        self.fingerprint = fingerprint
        self.max_tokens = max_tokens
        self._unknown_id = self._tokenizer.token_to_id("[UNK]")

    def encode_detailed(self, texts: list[str]) -> Encoded:
        """One graph run per text. The int8 graph quantizes its activations with one scale per
        tensor, taken from their range: run in a batch, the other texts and their padding
        would move a text's vector (cosine down to 0.975 for "hi"). Alone, a text's vector
        depends on the text only, so a lookup sees exactly what a bulk insert stored; on one
        thread it is also no slower than batches of 64 (204 against 184 texts/s)."""
        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        truncated, unseen = [], []
        encodings = self._tokenizer.encode_batch(texts) if texts else []
        for i, (text, e) in enumerate(zip(texts, encodings, strict=True)):
            ids = np.asarray([e.ids], dtype=np.int64)
            (out,) = self._session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})
            vectors[i] = out[0]
            truncated.append(bool(e.overflowing))
            unseen.append(self._unseen_in(text, e))
        return Encoded(vectors, truncated, unseen)

    def _unseen_in(self, text: str, encoding: Encoding) -> tuple[str, ...]:
        if self._unknown_id is None or self._unknown_id not in encoding.ids:
            return ()
        pieces = zip(encoding.ids, encoding.offsets, strict=True)
        return tuple(text[start:end] for i, (start, end) in pieces if i == self._unknown_id)

    def unseen(self, texts: list[str]) -> list[tuple[str, ...]]:
        """Per text, the spans the model cannot see. A word the vocabulary has no pieces for
        (an emoji, most words of some scripts, a word over 100 characters) becomes the one
        [UNK] token, so texts that differ only there get the same vector."""
        if self._unknown_id is None:
            return [()] * len(texts)
        out: list[tuple[str, ...]] = []
        for idx in batches(len(texts), 1024):  # all 117k QQP texts at once would hold ~0.4 GB
            chunk = [texts[i] for i in idx]
            encodings = self._tokenizer.encode_batch(chunk)
            out += [self._unseen_in(t, e) for t, e in zip(chunk, encodings, strict=True)]
        return out

    def encode(self, texts: str | list[str]) -> np.ndarray:
        """One string gives shape (dim,); a list gives (n, dim)."""
        if isinstance(texts, str):
            return self.encode_detailed([texts]).vectors[0]
        return self.encode_detailed(texts).vectors


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
        fingerprint = manifest["sha256"]
        if not isinstance(fingerprint, str):
            raise ValueError("its sha256 is not a string")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelNotBuiltError(
            f"the built model in {folder} is incomplete (manifest: {exc!r}); rebuild: edgecache model build"
        ) from exc
    model = folder / "model.onnx"
    if verify and (not model.is_file() or sha256_file(model) != fingerprint):
        raise ModelNotBuiltError(f"{model} does not match its manifest hash; rebuild: edgecache model build")
    return Encoder(model, folder / TOKENIZER_FILE, threads=threads, fingerprint=fingerprint)
