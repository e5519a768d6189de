"""How much of the learned head's F1 is the luck of its seed? (the shipped head uses seed 13)

Fits the learned 64-d head (`edgecache model fit-projection --kind learned --dims 64`, the
same code and settings) once per seed on the QQP training split; as in the build, its epoch
is the best of 20 on validation F1. Each head is scored as the default stores vectors (i8,
guards off: they do not depend on the head), pairwise protocol: the whole test split at the
threshold chosen on the whole validation split, and MeanCache's half-duplicate test at that
same threshold (`evalrun.balanced_report`). The shipped head is scored alongside.

    .venv/bin/python benchmarks/head_seeds.py   ->  benchmarks/results/head_seeds.json
        (~10 min on 2 cores; needs torch, from the [build] extra)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from edgecache.evalrun import balanced_report, qqp_vectors
from edgecache.evaluation import pairwise_hits, sweep_of
from edgecache.metrics import at, best
from edgecache.projection import Projection, shipped
from edgecache.projection_fit import fit_learned

OUT = Path(__file__).parent / "results" / "head_seeds.json"


def score(projection: Projection, data) -> dict:
    hits, labels = {}, {}
    for split in ("validation", "test"):
        a, b, labels[split] = data.pair_arrays(split)
        hits[split] = pairwise_hits(projection.apply(a), projection.apply(b), "i8")
    chosen = best(sweep_of(hits["validation"], labels["validation"]))
    half = balanced_report(
        lambda split, rows: sweep_of(hits[split], labels[split], rows=rows),
        labels,
        whole_validation_threshold=chosen.threshold,
    )
    return {
        "best_epoch": projection.info.get("best_epoch"),
        "validation_f1": chosen.f1,
        "threshold": chosen.threshold,
        "test_f1": at(sweep_of(hits["test"], labels["test"]), chosen.threshold).f1,
        "half_duplicate_test_f1": half["test_at_whole_validation_threshold"]["f1"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[13, 14, 15, 16, 17])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    started = time.time()
    data = qqp_vectors()
    rows = {"shipped": score(shipped("learned-64"), data)}
    print(f"shipped: {rows['shipped']}", flush=True)
    for seed in args.seeds:
        head = fit_learned(
            data.pair_arrays("train"),
            data.pair_arrays("validation"),
            data.matrix("train"),
            64,
            seed=seed,
            progress=lambda _: None,
        )
        rows[f"seed {seed}"] = score(head, data)
        print(f"seed {seed}: {rows[f'seed {seed}']}", flush=True)
    fitted = [v for k, v in rows.items() if k.startswith("seed")]
    summary = {
        m: {
            "mean": float(np.mean([r[m] for r in fitted])),
            "min": min(r[m] for r in fitted),
            "max": max(r[m] for r in fitted),
        }
        for m in ("validation_f1", "test_f1", "half_duplicate_test_f1")
    }
    result = {
        "benchmark": "head_seeds",
        "encoder": data.fingerprint,
        "heads": rows,
        "over_seeds": summary,
        "seconds": round(time.time() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
