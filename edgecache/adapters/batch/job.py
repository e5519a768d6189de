"""`run_batch_job`: the driver running both passes and writing the output and the summary."""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ...errors import ConfigError, InvalidInputError
from ...raycluster import connect_ray
from .classify import classify_batch
from .config import BatchJobConfig
from .decode import load_batch
from .embedding import Embedder, probe_images
from .errors import BatchJobError
from .fit import fit_from_batches
from .model import load_backend, onnx_bytes, state_arrays
from .output import ResultWriter
from .storage import list_inputs, put_bytes
from .summary import BatchJobSummary

# The driver's read-back of pass 1: rows per batch it holds at once.
_STREAM_ROWS = 4096


def _stderr(message: str) -> None:
    print(f"[classify-images] {message}", file=sys.stderr, flush=True)


def run_batch_job(
    config: BatchJobConfig, progress: Callable[[str], None] | None = _stderr
) -> BatchJobSummary:
    """Run both passes and write the output and the summary; see the package docstring
    (`edgecache.adapters.batch`).

    progress: called with one line per step (None: silent). Ray Data's own progress bars show
    the stages while they run."""
    say = progress or (lambda _m: None)
    t0 = time.perf_counter()
    paths = list_inputs(config.input, config.endpoint_url, config.extensions)
    if not paths:
        raise InvalidInputError(f"no input files under {config.input}")
    say(f"{len(paths)} files under {config.input}")

    backend = load_backend(config)
    from ..openclip import transform_params

    transform = transform_params(backend)
    class_embeddings = backend.class_embeddings(list(config.class_names), list(config.templates))
    probe = probe_images(transform)
    expected = backend.embed_pil([_pil(x) for x in probe])
    fingerprint = backend.fingerprint

    started = connect_ray(config.address, config.num_cpus)
    try:
        import ray

        cpus = int(ray.cluster_resources().get("CPU", 1))
        actors = config.actors or max(1, math.floor((cpus - config.read_cpus) / config.actor_cpus))
        if actors * config.actor_cpus + config.read_cpus > cpus:
            # Ray Data would wait forever for CPUs the cluster does not have.
            raise ConfigError(
                f"{actors} actor(s) x {config.actor_cpus} CPU + {config.read_cpus} CPU for reading "
                f"need more than the cluster's {cpus} CPUs: lower actors, actor_cpus or read_cpus"
            )
        threads = config.threads or max(1, math.ceil(config.actor_cpus))
        if config.engine == "torch":
            ref = ray.put(state_arrays(backend.model))
            engine = {"kind": "torch", "ref": ref, "model_name": backend.model_name, "config": backend.config}
        else:
            engine = {"kind": "onnx", "ref": ray.put(onnx_bytes(backend, config.onnx_path, say))}
        del backend  # the driver no longer needs the weights; the actors have their own copy

        summary = _run_passes(
            config,
            paths,
            transform,
            class_embeddings,
            fingerprint,
            probe,
            expected,
            engine,
            actors,
            threads,
            say,
        )
        summary.total_s = time.perf_counter() - t0
        summary.summary_path = config.resolved_summary_path
        put_bytes(summary.summary_path, json.dumps(summary.to_dict(), indent=2).encode(), config.endpoint_url)
        say(summary.line())
        return summary
    finally:
        if started:
            import ray

            ray.shutdown()


def _pil(pixels: np.ndarray) -> Any:
    from PIL import Image

    return Image.fromarray(pixels, "RGB")


def _run_passes(
    config: BatchJobConfig,
    paths: list[str],
    transform: dict[str, Any],
    class_embeddings: np.ndarray,
    fingerprint: str,
    probe: np.ndarray,
    expected: np.ndarray,
    engine: dict[str, Any],
    actors: int,
    threads: int,
    say: Callable[[str], None],
) -> BatchJobSummary:
    import ray
    import ray.data

    bs = config.batch_size
    blocks = max(1, min(-(-len(paths) // bs), 1000))
    say(
        f"pass 1: read, decode and embed {len(paths)} files "
        f"({config.engine}, {actors} actor(s) x {threads} thread(s))"
    )
    t1 = time.perf_counter()
    ds = (
        ray.data.from_items([{"path": p} for p in paths], override_num_blocks=blocks)
        .map_batches(
            load_batch,
            fn_kwargs={
                "transform": transform,
                "endpoint_url": config.endpoint_url,
                "max_bytes": config.max_file_bytes,
            },
            batch_size=bs,
            batch_format="numpy",
            num_cpus=config.read_cpus,
        )
        .map_batches(
            Embedder,
            fn_constructor_kwargs={
                "engine": engine,
                "transform": transform,
                "probe": probe,
                "expected": expected,
                "threads": threads,
            },
            compute=ray.data.ActorPoolStrategy(size=actors),
            batch_size=bs,
            batch_format="numpy",
            num_cpus=config.actor_cpus,
        )
        .materialize()
    )
    pass1_s = time.perf_counter() - t1

    t2 = time.perf_counter()
    rows = ds.iter_batches(batch_size=_STREAM_ROWS, batch_format="numpy")
    p1 = fit_from_batches(rows, class_embeddings, config, fingerprint, say)
    adapter, n_valid, errors, shots = p1.adapter, p1.valid, p1.errors, p1.shots
    if errors:
        say(f"skipped {len(errors)} file(s), e.g. {errors[0]['path']}: {errors[0]['reason']}")
    adapter_bytes = adapter.to_bytes()
    if config.save_adapter:
        put_bytes(config.save_adapter, adapter_bytes, config.endpoint_url)
        say(f"saved the adapter to {config.save_adapter}")
    fit_s = time.perf_counter() - t2

    say(f"pass 2: classify {n_valid} images with TFUP")
    t3 = time.perf_counter()
    classified = ds.map_batches(
        classify_batch,
        fn_kwargs={
            "adapter_bytes": adapter_bytes,
            "top_k": config.top_k,
            "include_embeddings": config.include_embeddings,
        },
        batch_size=max(bs, 256),
        batch_format="numpy",
        num_cpus=config.read_cpus,
    )
    writer = ResultWriter(config, adapter.dim)
    names = list(config.class_names)
    labels = dict.fromkeys(names, 0)
    zs_labels = dict.fromkeys(names, 0)
    changed = 0
    try:
        for batch in classified.iter_batches(batch_size=_STREAM_ROWS, batch_format="numpy"):
            writer.write(batch)
            for a, b in zip(batch["label"], batch["zero_shot_label"], strict=True):
                labels[str(a)] += 1
                zs_labels[str(b)] += 1
                changed += str(a) != str(b)
        if writer.rows != n_valid:
            raise BatchJobError(f"pass 2 wrote {writer.rows} rows for {n_valid} embedded images")
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    pass2_s = time.perf_counter() - t3
    per_class = np.bincount(adapter.labels, minlength=len(names))
    return BatchJobSummary(
        input=config.input,
        output=config.output,
        output_format=str(config.output_format),
        engine=config.engine,
        model=config.model,
        fingerprint=fingerprint,
        files=len(paths),
        classified=writer.rows,
        skipped=len(errors),
        errors=errors,
        classes=names,
        shots=shots,
        cache_size=int(adapter.keys.shape[0]),
        cache_per_class={c: int(k) for c, k in zip(names, per_class, strict=True)},
        label_counts=labels,
        zero_shot_label_counts=zs_labels,
        changed_by_tfup=int(changed),
        pass1_s=pass1_s,
        fit_s=fit_s,
        pass2_s=pass2_s,
        total_s=0.0,
        embed_images_per_s=n_valid / pass1_s if pass1_s > 0 else 0.0,
        read_busy_s=p1.read_busy_s,
        embed_busy_s=p1.embed_busy_s,
        embed_busy_images_per_s=n_valid / p1.embed_busy_s if p1.embed_busy_s > 0 else 0.0,
        actors=actors,
        adapter_path=config.save_adapter,
    )
