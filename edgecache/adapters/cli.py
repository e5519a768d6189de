"""`edgecache adapters ...`: the TFUP adapter's command group.

    edgecache adapters classify-images --input photos/ --output labels.parquet \\
        --classes cat dog bird --model ViT-B-32 --checkpoint vit_b32.pt --engine onnx

Only argparse here; the work is `edgecache.adapters.batch.run_batch_job`, imported when the
command runs so that `edgecache --help` needs neither Ray nor torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["add_adapters_parser", "read_list_file"]


def read_list_file(path: str, what: str) -> list[str]:
    """Class names or templates from a file: a JSON list of strings, or one per line (blank lines
    and lines starting with # are skipped)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the {what} file {p}: {exc}") from exc
    if p.suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"{what} file {p} is not valid JSON: {exc}") from exc
        if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
            raise ConfigError(f"{what} file {p} must hold a JSON list of strings")
        return data
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _one_of(args: argparse.Namespace, inline: str, file: str, what: str, default: Any = None) -> Any:
    given, path = getattr(args, inline), getattr(args, file)
    if given and path:
        raise ConfigError(f"give --{inline.replace('_', '-')} or --{file.replace('_', '-')}, not both")
    if path:
        return read_list_file(path, what)
    if given:
        return list(given)
    if default is None:
        raise ConfigError(
            f"give the {what}: --{inline.replace('_', '-')} ... or --{file.replace('_', '-')} FILE"
        )
    return default


def cmd_classify_images(args: argparse.Namespace) -> int:
    from .batch import DEFAULT_TEMPLATES, BatchJobConfig, run_batch_job
    from .tfup import TFUPConfig

    classes = _one_of(args, "classes", "classes_file", "class names")
    templates = _one_of(args, "templates", "templates_file", "prompt templates", list(DEFAULT_TEMPLATES))
    tfup_fields = {"shots": args.shots, "alpha": args.alpha, "beta": args.beta, "levels": args.levels}
    tfup = TFUPConfig(**{k: v for k, v in tfup_fields.items() if v is not None})
    config = BatchJobConfig(
        input=args.input,
        output=args.output,
        class_names=tuple(classes),
        templates=tuple(templates),
        model=args.model,
        pretrained=args.pretrained,
        checkpoint=args.checkpoint,
        seed=args.seed,
        engine=args.engine,
        onnx_path=args.onnx_path,
        tfup=tfup,
        top_k=args.top_k,
        output_format=args.format,
        endpoint_url=args.endpoint_url,
        summary_path=args.summary,
        save_adapter=args.save_adapter,
        batch_size=args.batch_size,
        actors=args.actors,
        actor_cpus=args.actor_cpus,
        threads=args.threads,
        read_cpus=args.read_cpus,
        extensions=tuple(args.extensions) if args.extensions else None,
        max_file_bytes=args.max_file_bytes,
        include_embeddings=args.include_embeddings,
        address=args.address,
        num_cpus=args.num_cpus,
    )
    if args.quiet:
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False
    summary = run_batch_job(config, progress=None if args.quiet else _progress)
    print(summary.line())
    return 0


def _progress(message: str) -> None:
    print(f"[classify-images] {message}", file=sys.stderr, flush=True)


def add_adapters_parser(sub: Any) -> argparse.ArgumentParser:
    """The `adapters` command group, added to the top-level subparsers `sub`."""
    adapters = sub.add_parser("adapters", help="TFUP adapters: batch image classification on Ray Data")
    asub = adapters.add_subparsers(dest="adapters_command", required=True)
    ci = asub.add_parser(
        "classify-images",
        help="classify a folder or S3 prefix of images with zero-shot CLIP + TFUP (two passes on Ray Data)",
        description="Pass 1 embeds every image and fits the TFUP feature cache from confident "
        "samples; pass 2 classifies every image with it. Files that are not readable images are "
        "reported and skipped. Writes one JSONL or Parquet file (path, label, score, "
        "zero_shot_label, zero_shot_score, top_k) and a JSON summary next to it.",
    )
    io = ci.add_argument_group("input and output")
    io.add_argument("--input", required=True, help="folder (recursive), one file, or s3://bucket/prefix")
    io.add_argument("--output", required=True, help="a .jsonl or .parquet path or s3:// URL")
    io.add_argument("--format", choices=("jsonl", "parquet"), help="output format (default: from the suffix)")
    io.add_argument("--summary", help="JSON summary path or s3:// URL (default: OUTPUT.summary.json)")
    io.add_argument("--save-adapter", help="also save the fitted TFUP adapter (path or s3:// URL)")
    io.add_argument("--endpoint-url", help="S3 endpoint of an S3-compatible server (default: AWS)")
    io.add_argument("--extensions", nargs="+", help="only files with these suffixes (default: all files)")
    io.add_argument("--max-file-bytes", type=int, default=64 << 20, help="larger files are skipped")
    io.add_argument("--top-k", type=int, help="entries in each row's top_k (default 5)")
    io.add_argument("--include-embeddings", action="store_true", help="add each image's embedding")
    io.add_argument("--quiet", action="store_true", help="no progress lines or Ray Data progress bars")

    cls = ci.add_argument_group("classes")
    cls.add_argument("--classes", nargs="+", metavar="NAME", help="class names")
    cls.add_argument("--classes-file", help="class names: one per line, or a .json list")
    cls.add_argument("--templates", nargs="+", metavar="TEMPLATE", help='prompt templates with "{}"')
    cls.add_argument("--templates-file", help="prompt templates: one per line, or a .json list")

    model = ci.add_argument_group("model")
    model.add_argument("--model", default="tiny", help="tiny (random test model) or an open_clip name")
    weights = model.add_mutually_exclusive_group()
    weights.add_argument("--pretrained", help="open_clip pretrained tag (downloaded or from the HF cache)")
    weights.add_argument("--checkpoint", help="local checkpoint file (.pt/.bin/.safetensors)")
    model.add_argument("--seed", type=int, default=0, help="seed of the tiny model")
    model.add_argument("--engine", choices=("torch", "onnx"), default="torch", help="image tower runtime")
    model.add_argument("--onnx-path", help="keep the ONNX export here and reuse it while the weights match")

    tfup = ci.add_argument_group("TFUP (defaults: the paper's)")
    tfup.add_argument("--shots", type=int, help="cache entries per class (default: the paper's rule)")
    tfup.add_argument("--alpha", type=float, help="weight of the cache logits (0.3)")
    tfup.add_argument("--beta", type=float, help="affinity sharpness (1.0)")
    tfup.add_argument("--levels", choices=("both", "feature", "semantic"), help="similarity levels (both)")

    ray = ci.add_argument_group("Ray")
    ray.add_argument("--address", help="existing cluster (auto, host:6379, ray://head:10001)")
    ray.add_argument("--num-cpus", type=int, help="CPUs of the local cluster (default: all)")
    ray.add_argument("--actors", type=int, help="embedding actors (default: CPUs - 1, at least 1)")
    ray.add_argument("--actor-cpus", type=float, default=1.0, help="CPUs per embedding actor")
    ray.add_argument("--threads", type=int, help="threads per embedding actor (default: its CPUs)")
    ray.add_argument("--read-cpus", type=float, default=0.5, help="CPUs per read/decode task")
    ray.add_argument("--batch-size", type=int, default=64, help="images per batch")
    ci.set_defaults(func=cmd_classify_images)
    return adapters
