"""Images/s of the Ray Data batch job (edgecache.adapters.batch): torch vs ONNX image tower.

    python benchmarks/batch_images.py            ->  benchmarks/results/batch_images.json
    python benchmarks/batch_images.py --models tiny

One local Ray cluster (num_cpus=2, 127.0.0.1) for every run; each run is the whole job
(`run_batch_job`: list, read + decode + resize/crop in tasks, embed in one actor, fit TFUP,
classify, write Parquet) on the first N CIFAR-10 test JPEGs of each class, read in place from
edgecache.evaldata.data_root()/images/cifar10_test through a folder of symlinks. Settings on these
2 cores: 1 embedding actor (1 CPU reserved, 2 intra-op threads), read/decode tasks at 0.5 CPU,
batches of 32. torch then ONNX, one run each, in the same process and cluster.

Per model and engine:
- `pass1_ips` = N / pass-1 wall time: read, decode, embed, *including* the actor's start (torch
  + open_clip import and weights from the object store, or an onnxruntime session): what a job
  of this size sees end to end;
- `embed_busy_ips` = N / seconds the embedding actor spent inside its batches (normalise + image
  tower): the engine's own rate inside the job, free of start-up and of waiting for input;
- `job_s` = the whole job, driver included (model load, prompt embedding, for ONNX the export:
  not cached between runs here, so it is paid once per ONNX run).
`onnx_vs_torch` = ONNX / torch for each rate, measured in the same run.
Models: `tiny` (the test model, 32 px) and ViT-B-32 at 224 px with random weights (no weights
can be downloaded here; the speed is the real architecture's, the labels are meaningless).
The machine is shared: absolute numbers move with other load (recorded as the 1-minute load
average); compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from edgecache.evaldata import data_root

HERE = Path(__file__).parent
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MODELS = {"tiny": 2000, "ViT-B-32": 200}  # images per run
SETTINGS = {"actors": 1, "actor_cpus": 1.0, "threads": 2, "read_cpus": 0.5, "batch_size": 32}


def link_subset(n: int, workdir: Path) -> Path:
    """A folder of symlinks to the first n/10 images of each class (no data copied)."""
    src = data_root() / "images" / "cifar10_test"
    per = -(-n // len(CLASSES))
    dst = workdir / f"cifar_{n}"
    count = 0
    for c in CLASSES:
        files = sorted((src / c).glob("*.jpg"))[:per]
        (dst / c).mkdir(parents=True, exist_ok=True)
        for f in files:
            if count >= n:
                break
            (dst / c / f.name).symlink_to(f)
            count += 1
    if count < n:
        sys.exit(f"need {n} CIFAR-10 images under {src}, found {count}")
    return dst


def run_one(model: str, engine: str, folder: Path, workdir: Path) -> dict:
    from edgecache.adapters.batch import BatchJobConfig, run_batch_job

    config = BatchJobConfig(
        input=str(folder),
        output=str(workdir / f"{model}-{engine}-{folder.name}.parquet"),
        class_names=tuple(CLASSES),
        model=model,
        engine=engine,
        **SETTINGS,
    )
    import torch

    torch.manual_seed(0)  # ViT-B-32 with random weights: the same weights for both engines
    t = time.perf_counter()
    s = run_batch_job(config, progress=None)
    return {
        "images": s.classified,
        "skipped": s.skipped,
        "pass1_s": s.pass1_s,
        "fit_s": s.fit_s,
        "pass2_s": s.pass2_s,
        "job_s": time.perf_counter() - t,
        "pass1_ips": s.classified / s.pass1_s,
        "embed_busy_s": s.embed_busy_s,
        "read_busy_s": s.read_busy_s,
        "embed_busy_ips": s.embed_busy_images_per_s,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), help="models to run (default: all)")
    parser.add_argument("--out", default=str(HERE / "results" / "batch_images.json"))
    args = parser.parse_args()

    import onnxruntime
    import open_clip
    import ray
    import torch
    from ray.data import DataContext

    from edgecache.adapters.batch import start_local_ray

    models = {m: MODELS[m] for m in (args.models or list(MODELS))}
    start_local_ray(num_cpus=2)
    DataContext.get_current().enable_progress_bars = False
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            for model, n in models.items():
                folder = link_subset(n, workdir)
                row: dict = {"model": model, "images": n}
                for engine in ("torch", "onnx"):
                    r = run_one(model, engine, folder, workdir)
                    r["load_average_1m"] = os.getloadavg()[0]
                    row[engine] = r
                    print(
                        f"{model:9s} {engine:5s} N={n}: pass 1 {r['pass1_s']:6.1f} s = {r['pass1_ips']:7.1f} "
                        f"images/s; actor busy {r['embed_busy_s']:6.1f} s = {r['embed_busy_ips']:7.1f} "
                        f"images/s; job {r['job_s']:6.1f} s",
                        flush=True,
                    )
                row["onnx_vs_torch"] = {
                    k: row["onnx"][k] / row["torch"][k] for k in ("pass1_ips", "embed_busy_ips")
                }
                print(
                    f"{model}: ONNX/torch pass 1 {row['onnx_vs_torch']['pass1_ips']:.2f}x, "
                    f"embedding actor {row['onnx_vs_torch']['embed_busy_ips']:.2f}x",
                    flush=True,
                )
                rows.append(row)
    finally:
        ray.shutdown()
    result = {
        "settings": {**SETTINGS, "ray_num_cpus": 2, "cpu_count": os.cpu_count()},
        "versions": {
            "python": platform.python_version(),
            "ray": ray.__version__,
            "torch": torch.__version__,
            "open_clip": open_clip.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
