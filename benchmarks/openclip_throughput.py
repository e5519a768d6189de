"""Image-embedding throughput of the open_clip backend: torch vs the exported ONNX image tower.

    python benchmarks/openclip_throughput.py   ->  benchmarks/results/openclip_throughput.json

CPU only, 2 threads (torch.set_num_threads(2), onnxruntime intra_op_num_threads=2), batch 32, on
256 CIFAR-10 test JPEGs (edgecache.evaldata.data_root()/images/cifar10_test). Two models:
- tiny: `OpenCLIPBackend.tiny()` (the test model: 32 px, 2+2 layers, width 64);
- ViT-B-32: the real architecture at 224 px with pretrained=None, i.e. random weights (no weights
  can be downloaded here): the accuracy is meaningless but the speed is the real model's.
Per model and runtime: `model_ips` = images/s of the image tower on already preprocessed pixels;
`e2e_ips` = images/s from JPEG bytes (decode + the backend's own preprocessing + tower).
One warm-up batch, then the best of `REPEATS` timed passes over the 256 images. The ONNX export's
numeric check (max abs diff, min cosine vs torch) is recorded too.
Needs torch + open_clip_torch (not project dependencies).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from edgecache.adapters.openclip import (
    OnnxImageBackend,
    OpenCLIPBackend,
    decode_image,
    export_image_onnx,
)
from edgecache.evaldata import data_root

HERE = Path(__file__).parent
THREADS, BATCH, N_IMAGES, REPEATS = 2, 32, 256, 2
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def load_blobs() -> list[bytes]:
    root = data_root() / "images" / "cifar10_test"
    per = -(-N_IMAGES // len(CLASSES))
    blobs = [f.read_bytes() for c in CLASSES for f in sorted((root / c).glob("*.jpg"))[:per]]
    if len(blobs) < N_IMAGES:
        sys.exit(f"need {N_IMAGES} CIFAR-10 images under {root}, found {len(blobs)}")
    return blobs[:N_IMAGES]


def best_ips(fn, n: int) -> float:
    times = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return n / min(times)


def bench(label: str, backend: OpenCLIPBackend, blobs: list[bytes], workdir: Path) -> dict:
    import torch

    images = [decode_image(b) for b in blobs]
    pixels = backend.pixels(images)
    chunks = [pixels[i : i + BATCH] for i in range(0, len(pixels), BATCH)]
    t = time.perf_counter()
    report = export_image_onnx(backend, workdir / f"{label}.onnx")
    export_s = time.perf_counter() - t
    onnx = OnnxImageBackend(report.path, threads=THREADS, batch_size=BATCH)
    np_chunks = [c.numpy() for c in chunks]

    def torch_model() -> None:
        with torch.inference_mode():
            for c in chunks:
                backend.model.encode_image(c)

    def onnx_model() -> None:
        for c in np_chunks:
            onnx.run_pixels(c)

    torch_model(), onnx_model()  # warm-up (first-call allocations, graph optimisation)
    a, b = backend.embed(blobs[:BATCH]), onnx.embed(blobs[:BATCH])
    row = {
        "model": label,
        "model_name": backend.model_name,
        "image_size": int(pixels.shape[-1]),
        "dim": backend.dim,
        "params_M": round(sum(p.numel() for p in backend.model.visual.parameters()) / 1e6, 2),
        "torch_model_ips": best_ips(torch_model, len(blobs)),
        "onnx_model_ips": best_ips(onnx_model, len(blobs)),
        "torch_e2e_ips": best_ips(lambda: backend.embed(blobs), len(blobs)),
        "onnx_e2e_ips": best_ips(lambda: onnx.embed(blobs), len(blobs)),
        "export_s": export_s,
        "export_check": {"max_abs_diff": report.max_abs_diff, "min_cosine": report.min_cosine},
        "e2e_min_cosine_torch_vs_onnx": float((a * b).sum(axis=1).min()),
        "onnx_bytes": os.path.getsize(report.path),
    }
    row["onnx_speedup_model"] = row["onnx_model_ips"] / row["torch_model_ips"]
    row["onnx_speedup_e2e"] = row["onnx_e2e_ips"] / row["torch_e2e_ips"]
    return row


def main() -> None:
    import open_clip
    import torch

    torch.set_num_threads(THREADS)
    blobs = load_blobs()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, make in (
            ("tiny", lambda: OpenCLIPBackend.tiny(seed=0, batch_size=BATCH)),
            (
                "ViT-B-32 (random weights)",
                lambda: OpenCLIPBackend.from_pretrained("ViT-B-32", None, batch_size=BATCH),
            ),
        ):
            rows.append(bench(label.split()[0], make(), blobs, Path(tmp)))
            rows[-1]["model"] = label
    result = {
        "threads": THREADS,
        "batch": BATCH,
        "images": len(blobs),
        "repeats": REPEATS,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "open_clip": open_clip.__version__,
            "onnxruntime": __import__("onnxruntime").__version__,
        },
        "cpu": platform.processor() or platform.machine(),
        "rows": rows,
    }
    out = HERE / "results" / "openclip_throughput.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    cols = ("torch img/s", 12), ("onnx img/s", 11), ("x", 5), ("torch e2e", 10), ("onnx e2e", 9)
    print(f"{'model':28} " + " ".join(f"{c:>{w}}" for c, w in cols) + f" {'x':>5} {'min cos':>9}")
    for r in rows:
        print(
            f"{r['model']:28} {r['torch_model_ips']:12.1f} {r['onnx_model_ips']:11.1f} "
            f"{r['onnx_speedup_model']:5.2f} {r['torch_e2e_ips']:10.1f} {r['onnx_e2e_ips']:9.1f} "
            f"{r['onnx_speedup_e2e']:5.2f} {r['export_check']['min_cosine']:9.6f}"
        )
    print(f"-> {out}")


if __name__ == "__main__":
    main()
