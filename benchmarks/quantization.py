"""Which int8 recipe keeps the encoder closest to fp32? (chooses modelbuild.DEFAULT_RECIPE)

For each recipe: cosine of int8 vs fp32 vectors over QQP sentences, and the F1 of both
QQP protocols (thresholds picked on validation, reported on test; 384-d, f32 index, so
only the encoder differs). Writes benchmarks/results/quantization.json.

    .venv/bin/python benchmarks/quantization.py [--pairs 3000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
from pathlib import Path

import numpy as np

from edgecache.embcache import encode_cached
from edgecache.encoder import TOKENIZER_FILE, Encoder
from edgecache.evaldata import load_qqp
from edgecache.evalrun import QQPVectors, evaluate_setting
from edgecache.machine import describe as describe_machine
from edgecache.modelbuild import RECIPES, build_model
from edgecache.projection import identity

OUT = Path(__file__).parent / "results" / "quantization.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pairs", type=int, default=3000, help="pairs per split (validation, test)")
    args = ap.parse_args()
    full = load_qqp()
    rng = random.Random(5)
    splits = {
        "train": [],
        "validation": rng.sample(full["validation"], args.pairs),
        "test": rng.sample(full["test"], args.pairs),
    }
    texts = sorted({t for s in splits.values() for p in s for t in (p.a, p.b)})
    report: dict = {
        "machine": describe_machine(),
        "sentences": len(texts),
        "pairs_per_split": args.pairs,
        "recipes": {},
    }
    with tempfile.TemporaryDirectory() as home:
        os.environ["EDGECACHE_HOME"] = home  # keep the user's built model untouched
        built = build_model("fp32", home=Path(home), name="fp32", progress=lambda _: None)
        fp32 = Encoder(built.path / "model.onnx", built.path / TOKENIZER_FILE, fingerprint=built.sha256)
        ref = encode_cached(fp32, texts, desc="fp32")
        for recipe in RECIPES:
            if recipe == "fp32":
                vecs, b = ref, built
            else:
                b = build_model(recipe, home=Path(home), name=recipe, progress=lambda _: None)
                enc = Encoder(b.path / "model.onnx", b.path / TOKENIZER_FILE, fingerprint=b.sha256)
                vecs = encode_cached(enc, texts, desc=recipe)
            cos = np.sum(vecs * ref, axis=1)
            data = QQPVectors(splits, dict(zip(texts, vecs, strict=True)), b.sha256)
            res = evaluate_setting(data, identity(), "f32")
            row = {
                "model_bytes": (b.path / "model.onnx").stat().st_size,
                "cosine_to_fp32": {
                    "mean": float(cos.mean()),
                    "min": float(cos.min()),
                    "p01": float(np.percentile(cos, 1)),
                },
                "pairwise_test": res["pairwise"]["test_at_validation_threshold"],
                "retrieval_test": res["retrieval"]["test_at_validation_threshold"],
            }
            report["recipes"][recipe] = row
            print(
                f"{recipe:>26}: cos mean {row['cosine_to_fp32']['mean']:.4f} min "
                f"{row['cosine_to_fp32']['min']:.4f} | pairwise F1 {row['pairwise_test']['f1']:.4f} "
                f"| retrieval F1 {row['retrieval_test']['f1']:.4f} | {row['model_bytes'] / 1e6:.1f} MB",
                flush=True,
            )
    base = report["recipes"]["fp32"]
    for row in report["recipes"].values():
        row["pairwise_f1_loss_vs_fp32"] = base["pairwise_test"]["f1"] - row["pairwise_test"]["f1"]
        row["retrieval_f1_loss_vs_fp32"] = base["retrieval_test"]["f1"] - row["retrieval_test"]["f1"]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
