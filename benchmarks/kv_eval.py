"""KV-cache compression: accuracy, KV bytes and time of each press against the full cache.

    .venv/bin/python benchmarks/kv_eval.py [--quick] [--threads 1]
        ->  benchmarks/results/kv_eval.json, benchmarks/results/kv_eval.png

Tasks (built by `kv_harness` from ../shared/data text, fixed seed):
- niah: one needle ("The secret code of the amber falcon is 4721.") in a haystack of real
  sentences, at each requested depth; one question.
- shared (SCBench style): several needles spread through one context, one question per
  needle, all answered from the same compressed cache.

Every press runs through kvpress's pipeline: the context is prefilled and compressed
without the question, then each question is decoded greedily. Anchors in the same run: the
full cache (accuracy, bytes, time) and SnapKV at the same budget. Accuracy is "the answer
contains the needle's number" (exact match is saved too). KV bytes are read from the cache
tensors after prefill+compression (and at peak while answering), not computed on paper.

`--query-aware` compresses each NIAH context together with its question (the setting of the
SnapKV / WindowKV / CompressKV papers' LongBench runs); by default compression is
question-agnostic, as kvpress's pipeline and SCBench's shared contexts require.
`--merge A.json B.json ...` summarises records of earlier runs (parallel shards, other
seeds) instead of running anything; `kv_gpu.py` is this script with CUDA defaults.

How the saved results were made (2-core CPU shared with other jobs, 1 torch thread each):
runs of `--seed 0` and `--seed 1` split by `--presses` over parallel processes, then
`--merge` of their JSON into results/kv_eval.json; the query-aware table is
`--query-aware --shared-length 0 --needles 2 --budgets 0.1`, merged the same way into
results/kv_eval_query_aware.json. Times on that machine are inflated and noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import kv_harness as kh  # a sibling file: benchmarks/ is not a package

from edgecache.machine import describe as describe_machine

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "kv_eval.json"
BASELINES = ("snapkv", "streamingllm", "knorm", "pyramidkv")
OURS = ("windowkv", "compresskv", "taskkv", "sentencekv", "sentencekv_offload")
REFERENCE = "snapkv"
GOAL_BUDGET = 0.1
GOAL_OF_FULL = 0.95

CPU_DEFAULTS: dict[str, Any] = {
    "lengths": [1024],
    "depths": [0, 25, 50, 75, 100],
    "needles": 1,
    "shared_length": 1024,
    "shared_contexts": 1,
    "shared_facts": 4,
    "presses": ["full", *BASELINES, *OURS],
    "budgets": [0.5, 0.25, 0.1],
    "max_new_tokens": 5,
    "device": "cpu",
}
QUICK: dict[str, Any] = {
    "lengths": [512],
    "depths": [0, 100],
    "needles": 1,
    "shared_length": 512,
    "shared_contexts": 1,
    "shared_facts": 2,
    "presses": ["full", "snapkv", "windowkv"],
    "budgets": [0.25],
}


def build_parser(defaults: dict[str, Any], description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="Hugging Face causal-LM folder (default: packaged SmolLM2)")
    p.add_argument("--device", default=None, help=f"auto, cpu, cuda[:N] (default {defaults['device']})")
    p.add_argument("--dtype", default="auto", help="auto (fp32 on CPU, bf16/fp16 on CUDA), float32, bfloat16")
    p.add_argument(
        "--lengths", type=int, nargs="+", help=f"NIAH context tokens (default {defaults['lengths']})"
    )
    p.add_argument(
        "--depths", type=float, nargs="+", help="needle depths in percent (default 0 25 50 75 100)"
    )
    p.add_argument(
        "--needles", type=int, help=f"needles (haystacks) per length (default {defaults['needles']})"
    )
    p.add_argument("--shared-length", type=int, help="tokens of each shared context (0 = no shared task)")
    p.add_argument("--shared-contexts", type=int, help="shared contexts")
    p.add_argument("--shared-facts", type=int, help="facts (questions) per shared context")
    p.add_argument(
        "--presses", nargs="+", help="press names (edgecache.llm.presses.PRESSES); 'full' = anchor"
    )
    p.add_argument(
        "--budgets", type=float, nargs="+", help="fractions of the KV cache kept (default 0.5 0.25 0.1)"
    )
    p.add_argument(
        "--max-new-tokens", type=int, help="greedy tokens per answer (a 4-digit code + '.' needs 5)"
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (1 is faster on a busy 2-core box)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--query-aware",
        action="store_true",
        help="compress NIAH contexts with their question (the papers' setting); shared ones stay as they are",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: one short length, 3 presses, one budget")
    p.add_argument(
        "--out", type=Path, default=defaults.get("out", OUT), help="JSON output (plot: same stem .png)"
    )
    p.add_argument("--merge", type=Path, nargs="+", help="summarise records of these JSON files, run nothing")
    p.add_argument("--no-progress", action="store_true")
    return p


def resolve(args: argparse.Namespace, defaults: dict[str, Any]) -> dict[str, Any]:
    """Explicit flags win over --quick, which wins over the script's defaults."""
    base = defaults | (QUICK if args.quick else {})
    cfg = {k: (getattr(args, k) if getattr(args, k, None) is not None else v) for k, v in base.items()}
    cfg["depths"] = [d / 100 for d in cfg["depths"]]
    from edgecache.errors import ConfigError
    from edgecache.llm.presses import press_spec, validate_budget

    try:
        cfg["presses"] = [press_spec(n).name for n in cfg["presses"]]
        cfg["budgets"] = [validate_budget(b) for b in cfg["budgets"]]
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None
    return cfg


def load(model: str | None, device: str, dtype: str) -> Any:
    """The packaged SmolLM2 (built on first use, ~1 min from its GGUF) or a model folder."""
    from edgecache.llm.model import ensure_packaged_model, load_model

    if model is None:
        ensure_packaged_model()
    return load_model(model, device=device, dtype=dtype)


def build_samples(cfg: dict[str, Any], tokenizer: Any, seed: int) -> list[kh.Sample]:
    from edgecache.evaldata import data_root

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    sentences = kh.load_sentences(data_root())
    samples = kh.niah_samples(sentences, cfg["lengths"], cfg["depths"], cfg["needles"], count, seed=seed)
    if cfg["shared_length"] and cfg["shared_contexts"]:
        samples += kh.shared_context_samples(
            sentences, cfg["shared_length"], cfg["shared_contexts"], cfg["shared_facts"], count, seed=seed
        )
    return samples


def model_info(lm: Any) -> dict[str, Any]:
    c = lm.model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return {
        "source": lm.source,
        "device": str(lm.device),
        "dtype": str(lm.model.dtype).replace("torch.", ""),
        "attn_implementation": c._attn_implementation,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "head_dim": head_dim,
        "parameters": sum(p.numel() for p in lm.model.parameters()),
    }


def headline(summary: Sequence[dict[str, Any]], presses: Sequence[str]) -> list[dict[str, Any]]:
    """Each compressing press at the goal budget (or the smallest one run), over all tasks:
    accuracy against the full cache (goal ≥ 95%) and against SnapKV (goal: ≥)."""
    budgets = sorted({r["budget"] for r in summary if r["press"] != "full"})
    if not budgets:
        return []
    budget = GOAL_BUDGET if GOAL_BUDGET in budgets else budgets[0]
    rows = {(r["press"], r["budget"]): r for r in summary if r["task"] == "all"}
    ref = rows.get((REFERENCE, budget))
    out = []
    for name in presses:
        row = rows.get((name, budget))
        if name == "full" or row is None:
            continue
        vs_full = row["accuracy_vs_full"]
        out.append(
            {
                "press": name,
                "ours": name in OURS,
                "budget": budget,
                "accuracy": row["accuracy"],
                "accuracy_vs_full": vs_full,
                "accuracy_minus_snapkv": None if ref is None else row["accuracy"] - ref["accuracy"],
                "kv_bytes_vs_full": row["kv_bytes_vs_full"],
                "kv_attended_vs_full": row["kv_attended_vs_full"],
                "kv_peak_vs_full": row.get("kv_peak_vs_full"),
                "keeps_95pct_of_full": None if vs_full is None else vs_full >= GOAL_OF_FULL,
                "matches_or_beats_snapkv": None if ref is None else row["accuracy"] >= ref["accuracy"],
            }
        )
    return out


def print_summary(summary: Sequence[dict[str, Any]]) -> None:
    head = (
        f"{'task':7s} {'press':18s} {'budget':>6s} {'acc':>6s} {'exact':>6s} {'n':>4s} {'vs full':>7s} "
        f"{'vs snap':>7s} {'KV MB':>7s} {'attnd MB':>8s} {'peak MB':>7s} {'prefill s':>9s} {'ms/step':>7s}"
    )
    print(head)
    for r in summary:

        def f(x: float | None, fmt: str) -> str:
            return format(x, fmt) if x is not None else "-"

        print(
            f"{r['task']:7s} {r['press']:18s} {r['budget']:6.2f} "
            f"{r['accuracy']:6.3f} {r['exact_match']:6.3f} "
            f"{r['n_questions']:4d} {f(r['accuracy_vs_full'], '7.3f'):>7s} "
            f"{f(r['accuracy_vs_' + REFERENCE], '7.3f'):>7s} "
            f"{r['kv_bytes_after_prefill'] / 1e6:7.2f} {f((r['kv_bytes_attended'] or 0) / 1e6, '8.2f'):>8s} "
            f"{r['kv_bytes_peak'] / 1e6:7.2f} {r['prefill_s']:9.2f} {f(r['decode_ms_per_step'], '7.0f'):>7s}"
        )


def write_outputs(result: dict[str, Any], out: Path, title: str, plot: bool = True) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    if plot and result.get("summary"):
        kh.plot_accuracy(result["summary"], out.with_suffix(".png"), title)


def merge(paths: Sequence[Path], out: Path) -> dict[str, Any]:
    parts = [json.loads(p.read_text()) for p in paths]
    records = [r for part in parts for r in part["records"]]
    seen: set[tuple[str, float, str]] = set()
    unique = []
    for r in records:
        key = (r["press"], r["budget"], r.get("sample_id", "error"))
        if key not in seen:
            seen.add(key)
            unique.append(r)
    result = dict(parts[0])
    presses = list(dict.fromkeys(r["press"] for r in unique))
    summary = kh.summarize(unique, reference=REFERENCE)
    result.update(
        records=unique,
        summary=summary,
        headline=headline(summary, presses),
        merged_from=[str(p) for p in paths],
        elapsed_s=sum(p.get("elapsed_s", 0) for p in parts),
    )
    seeds = sorted({part["config"].get("seed", 0) for part in parts})
    budgets = sorted({r["budget"] for r in unique if r["press"] != "full"}, reverse=True)
    result["config"] = dict(result["config"], presses=presses, seeds=seeds, budgets=budgets)
    result["command"] = [part.get("command") for part in parts]
    by_id = {sample["sample_id"]: sample for part in parts for sample in part.get("samples", [])}
    result["samples"] = list(by_id.values())
    write_outputs(result, out, _title(result))
    return result


def _title(result: dict[str, Any]) -> str:
    m = result["model"]
    path = Path(m["source"])
    # The packaged build lives in a folder named by its content hash; its parent names it.
    name = path.parent.name if re.fullmatch(r"[0-9a-f]{16}", path.name) else path.name
    params = m["parameters"] / 1e6
    return f"{name} ({params:.0f}M params, {m['device']}, {m['dtype']}): accuracy vs KV budget"


def main(
    argv: Sequence[str] | None = None, defaults: dict[str, Any] = CPU_DEFAULTS, description: str = ""
) -> int:
    args = build_parser(defaults, description or __doc__ or "").parse_args(argv)
    if args.merge:
        result = merge(args.merge, args.out)
        print_summary(result["summary"])
        print(json.dumps(result["headline"], indent=1))
        return 0
    cfg = resolve(args, defaults)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    t0 = time.perf_counter()
    lm = load(args.model, args.device or cfg["device"], args.dtype)
    info = model_info(lm)
    print(
        f"model {info['source']} on {info['device']} ({info['dtype']}), "
        f"loaded in {time.perf_counter() - t0:.1f}s"
    )
    samples = build_samples(cfg, lm.tokenizer, args.seed)
    print(f"{len(samples)} contexts, {sum(len(s.questions) for s in samples)} questions")

    from edgecache.llm.presses import make_press

    def press_for(name: str, budget: float) -> Any:
        return make_press(name, budget, tokenizer=lm.tokenizer)

    specs = kh.press_grid(cfg["presses"], cfg["budgets"])
    pipe = kh.make_pipeline(lm.model, lm.tokenizer)
    result: dict[str, Any] = {
        "benchmark": "kv_eval",
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "config": cfg | {"seed": args.seed, "depths": cfg["depths"], "query_aware": args.query_aware},
        "model": info,
        "machine": {
            **describe_machine(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "kvpress": _version("kvpress"),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "format": {
            "needle": kh.NEEDLE_TEMPLATE,
            "question": kh.QUESTION_TEMPLATE,
            "answer_prefix": kh.ANSWER_PREFIX_TEMPLATE,
            "decoding": f"greedy, max_new_tokens={cfg['max_new_tokens']}",
            "chance": {
                "niah_random_4_digit_code": 1 / 9000,
                "shared_any_code_of_the_context": 1 / max(1, cfg["shared_facts"]),
            },
        },
        "samples": kh.sample_summary(samples),
    }

    def save(records: list[dict[str, Any]], plot: bool = False) -> None:
        # Called after every press too, so a run cut short still leaves its numbers.
        summary = kh.summarize(records, reference=REFERENCE)
        result.update(
            records=records,
            summary=summary,
            headline=headline(summary, cfg["presses"]),
            elapsed_s=time.perf_counter() - t0,
        )
        write_outputs(result, args.out, _title(result), plot=plot)

    records = kh.run_grid(
        pipe,
        samples,
        specs,
        press_for,
        cfg["max_new_tokens"],
        progress=not args.no_progress,
        after_press=save,
        query_aware=args.query_aware,
    )
    save(records, plot=True)
    print_summary(result["summary"])
    print(json.dumps(result["headline"], indent=1))
    errors = [r for r in records if "error" in r]
    for r in errors:
        print(f"FAILED {r['press']}@{r['budget']}: {r['error']}")
    print(f"wrote {args.out} and {args.out.with_suffix('.png')} in {time.perf_counter() - t0:.0f}s")
    return 1 if errors else 0


def _version(dist: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    raise SystemExit(main())
