"""Single-query encoder latency on one thread: the shipped int8 graph vs fp32 and vs
onnxruntime's BERT fusion (Attention, EmbedLayerNormalization, SkipLayerNormalization,
BiasGelu), fp32 and int8 (per-channel, as shipped).

The lookup-latency goal (p50 <= 3 ms) is spent mostly in the encoder; this measures whether
the transformer-specific graph fusion buys anything over the runtime's own ORT_ENABLE_ALL.
Queries are QQP test questions, encoded one at a time, in the same process (ratios to the
shipped model are what to read on a noisy machine).

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
from edgecache.modelbuild import _export_fp32, source_model_dir

OUT = Path(__file__).parent / "results" / "encoder_latency.json"
N_QUERIES = 400


def fuse_and_quantize(fp32: Path, folder: Path) -> tuple[Path, Path, dict]:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    fused = optimize_model(str(fp32), model_type="bert", num_heads=12, hidden_size=384)
    stats = {k: v for k, v in fused.get_fused_operator_statistics().items() if v}
    fused.save_model_to_file(str(folder / "fused.onnx"))
    quantize_dynamic(
        str(folder / "fused.onnx"),
        str(folder / "fused-int8.onnx"),
        weight_type=QuantType.QInt8,
        per_channel=True,
        # Fused contrib ops carry no inferred output types.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    return folder / "fused.onnx", folder / "fused-int8.onnx", stats


def latency(encoder: Encoder, queries: list[str]) -> dict:
    for q in queries[:20]:
        encoder.encode([q])
    ms = []
    for q in queries:
        t0 = time.perf_counter()
        encoder.encode([q])
        ms.append((time.perf_counter() - t0) * 1000)
    return {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90))}


def main() -> None:
    queries = [p.a for p in load_qqp()["test"][:N_QUERIES]]
    shipped = current_model_dir()
    tokenizer = shipped / TOKENIZER_FILE
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _export_fp32(source_model_dir(), folder / "fp32.onnx")
        fused, fused_int8, stats = fuse_and_quantize(folder / "fp32.onnx", folder)
        models = {
            "shipped-int8": shipped / "model.onnx",
            "fp32": folder / "fp32.onnx",
            "fused-fp32": fused,
            "fused-int8": fused_int8,
        }
        encoders = {name: Encoder(path, tokenizer, threads=1) for name, path in models.items()}
        reference = encoders["fp32"].encode(queries)
        rows = {}
        for name, encoder in encoders.items():
            cos = np.sum(encoder.encode(queries) * reference, axis=1)
            rows[name] = {
                **latency(encoder, queries),
                "cosine_to_fp32_min": float(cos.min()),
                "cosine_to_fp32_mean": float(cos.mean()),
            }
    anchor = rows["shipped-int8"]["p50_ms"]
    for name, row in rows.items():
        row["p50_vs_shipped"] = row["p50_ms"] / anchor
        print(
            f"{name:>13}: p50 {row['p50_ms']:.2f} ms ({row['p50_vs_shipped']:.2f}x shipped), "
            f"p90 {row['p90_ms']:.2f} ms, cosine to fp32 min {row['cosine_to_fp32_min']:.4f}"
        )
    result = {"benchmark": "encoder_latency", "queries": len(queries), "fused_ops": stats, "models": rows}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
