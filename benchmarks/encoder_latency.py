"""Single-query encoder latency on one thread: the shipped graph (onnxruntime's BERT fusion:
Attention, EmbedLayerNormalization, BiasGelu, residual adds left as Add + LayerNormalization;
then per-channel int8) against the same export with the residual adds fused into
SkipLayerNormalization (the build before 2026-11-30's second change), without any fusion
(int8), and fp32.

The lookup-latency goal (p50 <= 3 ms) is spent mostly in the encoder; this measures what
each graph choice buys. Every graph is loaded as the runtime loads the shipped one
(ORT_ENABLE_ALL without its load-time SkipLayerNormalization fusion, `Encoder`), so the
unfused baselines no longer get that fusion at load, as they did in runs before this change.
Queries are QQP test questions, encoded one at a time, every model in turn on each query in
the same process (ratios to the shipped model are what to read on a noisy machine).

    .venv/bin/python benchmarks/encoder_latency.py  ->  benchmarks/results/encoder_latency.json
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from edgecache.encoder import TOKENIZER_FILE, Encoder, current_model_dir
from edgecache.evaldata import load_qqp
from edgecache.machine import describe
from edgecache.modelbuild import DEFAULT_RECIPE, _export_fp32, _fuse, _quantize, source_model_dir

OUT = Path(__file__).parent / "results" / "encoder_latency.json"
N_QUERIES = 400


def latencies(encoders: dict[str, Encoder], queries: list[str], rounds: int = 3) -> dict[str, dict]:
    """p50/p90 per encoder, timed in turn on each query so load on the machine hits all alike."""
    for q in queries[:20]:
        for encoder in encoders.values():
            encoder.encode([q])
    ms: dict[str, list[float]] = {name: [] for name in encoders}
    for _ in range(rounds):
        for q in queries:
            for name, encoder in encoders.items():
                t0 = time.perf_counter()
                encoder.encode([q])
                ms[name].append((time.perf_counter() - t0) * 1000)
    return {
        name: {"p50_ms": float(np.percentile(v, 50)), "p90_ms": float(np.percentile(v, 90))}
        for name, v in ms.items()
    }


def main() -> None:
    queries = [p.a for p in load_qqp()["test"][:N_QUERIES]]
    shipped = current_model_dir()
    tokenizer = shipped / TOKENIZER_FILE
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        src = source_model_dir()
        _export_fp32(src, folder / "fp32.onnx")
        stats = _fuse(folder / "fp32.onnx", folder / "fused-fp32.onnx", src)
        _fuse(folder / "fp32.onnx", folder / "skip-fp32.onnx", src, skip_layer_norm=True)
        _quantize(folder / "skip-fp32.onnx", folder / "skip-int8.onnx", DEFAULT_RECIPE)
        _quantize(folder / "fp32.onnx", folder / "unfused-int8.onnx", DEFAULT_RECIPE)
        models = {
            "shipped-int8": shipped / "model.onnx",
            "skiplayernorm-int8": folder / "skip-int8.onnx",
            "unfused-int8": folder / "unfused-int8.onnx",
            "fp32": folder / "fp32.onnx",
            "fused-fp32": folder / "fused-fp32.onnx",
        }
        encoders = {name: Encoder(path, tokenizer, threads=1) for name, path in models.items()}
        reference = encoders["fp32"].encode(queries)
        rows = latencies(encoders, queries)
        for name, encoder in encoders.items():
            cos = np.sum(encoder.encode(queries) * reference, axis=1)
            rows[name] |= {
                "cosine_to_fp32_min": float(cos.min()),
                "cosine_to_fp32_mean": float(cos.mean()),
            }
    anchor = rows["shipped-int8"]["p50_ms"]
    for name, row in rows.items():
        row["p50_vs_shipped"] = row["p50_ms"] / anchor
        print(
            f"{name:>18}: p50 {row['p50_ms']:.2f} ms ({row['p50_vs_shipped']:.2f}x shipped), "
            f"p90 {row['p90_ms']:.2f} ms, cosine to fp32 min {row['cosine_to_fp32_min']:.4f}"
        )
    result = {
        "benchmark": "encoder_latency",
        "machine": describe(),
        "queries": len(queries),
        "fused_ops": stats,
        "models": rows,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
