"""Lambda layer / edge bundle: sizes per variant and architecture, and cold start.

Builds each bundle with functions/build_layer.py, then for every x86_64 bundle unzips it into
a temp folder and starts a fresh python3.12 per run with only that folder on its path (-S: no
site-packages; PYTHONPATH=<dir>/python, EDGECACHE_HOME=<dir>/edgecache-home, nothing else in
the environment; -B: no .pyc written, as on Lambda's read-only /opt). Each run times:
import (edgecache + the handler module), model load (shared_embedder), the first
SemanticCache (builds the shared category classifier: embeds its seed texts), and the first
lookup (miss) + insert + lookup (hit). Runs of the configurations are interleaved so machine
load drifts hit them alike. arm64 bundles are built and measured for size only (they cannot
run here). Writes benchmarks/results/layer.json.

    .venv/bin/python benchmarks/layer.py [--runs 7] [--out build/layer-bench]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from edgecache.machine import describe

REPO = Path(__file__).resolve().parents[1]
OUT = Path(__file__).parent / "results" / "layer.json"
MB, MIB = 1e6, 1 << 20
LIMIT_UNZIPPED = 250 * MIB  # function + layers (AWS: 262,144,000 bytes)
LIMIT_ZIPPED = 50 * MIB  # direct upload / Lambda@Edge origin functions
GOAL_UNZIPPED = 150 * MB
GOAL_EDGE_ZIPPED = 50 * MB
GOAL_COLD_MS = 600


def load_builder():
    spec = importlib.util.spec_from_file_location("build_layer", REPO / "functions" / "build_layer.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_layer"] = module
    spec.loader.exec_module(module)
    return module


def stats(values: list[float]) -> dict:
    return {
        "median": round(statistics.median(values), 1),
        "min": round(min(values), 1),
        "max": round(max(values), 1),
    }


def summarize(runs: list[dict], phases: tuple[str, ...]) -> dict:
    out = {f"{p}_ms": stats([r[f"{p}_ms"] for r in runs]) for p in (*phases, "total", "process")}
    out["total_cpu_ms"] = stats([r["total_cpu_ms"] for r in runs])
    out["total_without_cache_init_ms"] = stats([r["total_ms"] - r["cache_init_ms"] for r in runs])
    out["first_run_total_ms"] = round(runs[0]["total_ms"], 1)
    return out


def size_row(rep) -> dict:
    return {
        "zip": Path(rep.zip_path).name,
        "unzipped_bytes": rep.unzipped_bytes,
        "zipped_bytes": rep.zipped_bytes,
        "unzipped_MB": round(rep.unzipped_bytes / MB, 1),
        "zipped_MB": round(rep.zipped_bytes / MB, 1),
        "unzipped_MiB": round(rep.unzipped_bytes / MIB, 1),
        "zipped_MiB": round(rep.zipped_bytes / MIB, 1),
        "python_MB": round(rep.python_bytes / MB, 1),
        "model_MB": round(rep.model_bytes / MB, 1),
        "under_250MiB_unzipped": rep.unzipped_bytes < LIMIT_UNZIPPED,
        "under_150MB_goal": rep.unzipped_bytes <= GOAL_UNZIPPED,
        "under_50MiB_zipped": rep.zipped_bytes < LIMIT_ZIPPED,
        "under_50MB_zipped_goal": rep.zipped_bytes <= GOAL_EDGE_ZIPPED,
        "kept_distributions": rep.kept_distributions,
        "dropped_distributions": rep.dropped_distributions,
        "pruned_MB": round(rep.pruned_bytes / MB, 1),
        "pruned_largest": rep.pruned[:25],
        "strip": {k: (round(v / MB, 1) if k in ("before", "after") else v) for k, v in rep.strip.items()},
        "elf": rep.elf,
        "biggest": [[p, round(n / MB, 2)] for p, n in rep.biggest],
        "zip_sha256": rep.zip_sha256,
        "build_seconds": rep.seconds,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--out", type=Path, default=REPO / "build" / "layer-bench", help="where the zips go")
    ap.add_argument("--python", help="python3.12 (default: found via pyenv/PATH)")
    args = ap.parse_args()
    bl = load_builder()
    python = args.python or bl.find_python312()
    if not python:
        raise SystemExit("python3.12 is needed (pyenv install 3.12)")
    load_before = os.getloadavg()

    builds = {}
    for arch in ("x86_64", "arm64"):
        for variant in ("lambda", "edge"):
            builds[f"{variant}/{arch}"] = bl.build(arch, args.out, variant, python=python)
    # The edge bundle ships sourceless .pyc; its "without .pyc" twin keeps the sources instead.
    builds["edge/x86_64/nopyc"] = bl.build("x86_64", args.out, "edge", python=python, pyc=False)

    with tempfile.TemporaryDirectory(prefix="edgecache-layer-bench-") as tmp:
        tmp = Path(tmp)
        lam = bl.unzip(Path(builds["lambda/x86_64"].zip_path), tmp / "lambda")
        lam_src = tmp / "lambda-nopyc"
        shutil.copytree(lam, lam_src)
        bl.drop_pyc(lam_src)
        configs = {
            "lambda, .pyc": (lam, True),
            "lambda, no .pyc": (lam_src, True),
            "edge, sourceless .pyc": (bl.unzip(Path(builds["edge/x86_64"].zip_path), tmp / "edge"), False),
            "edge, sources only": (
                bl.unzip(Path(builds["edge/x86_64/nopyc"].zip_path), tmp / "edge-src"),
                False,
            ),
        }
        runs: dict[str, list[dict]] = {name: [] for name in configs}
        for i in range(args.runs):
            for name, (folder, handler) in configs.items():
                res = bl.run_probe(folder, python, handler=handler)
                if not res["hit"] or res["outside_bundle"]:
                    raise SystemExit(f"{name}: probe failed: {res}")
                runs[name].append(res)
                print(
                    f"run {i + 1}/{args.runs} {name:24s} import {res['import_ms']:5.0f}  load "
                    f"{res['model_load_ms']:5.0f}  cache_init {res['cache_init_ms']:5.0f}  first ops "
                    f"{res['first_ops_ms']:4.0f}  total {res['total_ms']:5.0f} ms",
                    flush=True,
                )
    load_after = os.getloadavg()

    cold = {name: summarize(r, bl.PHASES) for name, r in runs.items()}
    sample = runs["lambda, .pyc"][0]
    result = {
        "what": "Lambda layer / edge bundle sizes and cold start of a fresh python3.12 with only the bundle",
        "command": f"python benchmarks/layer.py --runs {args.runs}",
        "machine": {
            **describe(),
            "python_probe": sample["python"],
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in load_after],
        },
        "limits": {
            "unzipped_function_plus_layers_bytes": LIMIT_UNZIPPED,
            "zipped_direct_upload_bytes": LIMIT_ZIPPED,
            "goal_unzipped_bytes": GOAL_UNZIPPED,
            "goal_edge_zipped_bytes": GOAL_EDGE_ZIPPED,
            "goal_cold_start_ms": GOAL_COLD_MS,
        },
        "sizes": {name: size_row(rep) for name, rep in builds.items()},
        "model": {
            "dir": sample["model_dir"].split("edgecache-home/", 1)[-1],
            "bytes": builds["lambda/x86_64"].model_bytes,
            "files": [*bl.MODEL_FILES, "../CURRENT"],
        },
        "cold_start": {
            "runs": args.runs,
            "phases": {
                "import": "import edgecache (+ edgecache_functions.handler for lambda)",
                "model_load": "shared_embedder(CacheConfig().projection): manifest hash check, "
                "ORT session, tokenizer, projection",
                "cache_init": "first SemanticCache: builds the shared category classifier "
                "(embeds its seed texts once per process)",
                "first_ops": "lookup (miss) + insert + lookup (hit) on a MemoryStore",
                "process": "whole process wall time, interpreter start to exit",
            },
            "results": cold,
            "goal_met_total_median": {n: c["total_ms"]["median"] <= GOAL_COLD_MS for n, c in cold.items()},
            "goal_met_without_cache_init_median": {
                n: c["total_without_cache_init_ms"]["median"] <= GOAL_COLD_MS for n, c in cold.items()
            },
            "isolation": {
                "modules_from_outside_bundle_or_stdlib": sample["outside_bundle"],
                "boto3_loaded": sample["boto3_loaded"],
                "torch_loaded": sample["torch_loaded"],
                "handler_health_status": sample["health"],
                "hit_similarity": sample["similarity"],
            },
        },
        "arm64": "built and size-checked only: no arm64 machine or emulator here, so not executed",
    }
    OUT.write_text(json.dumps(result, indent=2) + "\n")

    print("\n| bundle | unzipped MB | zipped MB (MiB) | model MB | max GLIBC |")
    print("|---|---|---|---|---|")
    for name, rep in builds.items():
        s = size_row(rep)
        print(
            f"| {name} | {s['unzipped_MB']} | {s['zipped_MB']} ({s['zipped_MiB']}) | {s['model_MB']} | "
            f"{rep.elf.get('glibc_max', '?')} |"
        )
    head = (
        "| config | import | model load | cache init | first ops | total | total w/o cache init | process |"
    )
    print("\n" + head)
    print("|---|---|---|---|---|---|---|---|")
    for name, c in cold.items():
        cells = [
            f"{c[k]['median']:.0f} / {c[k]['min']:.0f}"
            for k in (
                "import_ms",
                "model_load_ms",
                "cache_init_ms",
                "first_ops_ms",
                "total_ms",
                "total_without_cache_init_ms",
                "process_ms",
            )
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"(median / min ms over {args.runs} runs; loadavg {load_before[0]:.1f} -> {load_after[0]:.1f})")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"{time.perf_counter() - start:.0f}s")
