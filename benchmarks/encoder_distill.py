"""Would a smaller encoder meet the lookup-latency goal, and at what F1? (an experiment, not shipped)

Lookup time is mostly the 6-layer MiniLM (`encoder_latency.py`). This script distils it into
a `--layers`-layer student: the student starts from the teacher's word embeddings (kept
frozen) and every other transformer layer, and learns to reproduce the shipped int8
encoder's vectors (cosine loss) for the QQP training split's questions. Then:
- QQP pairwise F1 (the issue's protocol, threshold chosen on validation, reported on test),
  raw 384-d, for the teacher and the student (torch fp32, and exported to int8 ONNX as the
  build would ship it), and with the shipped learned-64 head applied unchanged;
- one-query latency on one thread of the student's int8 graph vs the shipped encoder,
  measured in the same process (the ratio is what to read on a noisy machine).

With `--pair-weight W` the student also learns QQP itself: each step adds W times the
head's pair loss (`projection_fit.pair_loss`) on a batch of QQP training pairs, and a
learned-64 head is refitted on the student's int8 vectors (`learned_64_refit_i8`).
Every F1 is also reported on MeanCache's half-duplicate construction (`balanced`).

    .venv/bin/python benchmarks/encoder_distill.py --layers 3
        ->  benchmarks/results/encoder_distill.json   (~20 min on 2 cores)
    .venv/bin/python benchmarks/encoder_distill.py --layers 3 --pair-weight 1 \
        --out benchmarks/results/encoder_distill_qqp.json   (~50 min on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
from encoder_experiments import (  # a sibling module
    add_run_arguments,
    balanced_on_validation,
    chosen_on_validation,
    minilm,
    warmup_then_decay,
)
from encoder_latency import latencies  # a sibling script

from edgecache.encoder import TOKENIZER_FILE, Encoder, current_model_dir, load_encoder
from edgecache.evalrun import qqp_vectors
from edgecache.modelbuild import _export_fp32, _fuse, _quantize, source_model_dir
from edgecache.projection import shipped
from edgecache.projection_fit import fit_learned, pair_loss

OUT = Path(__file__).parent / "results" / "encoder_distill.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=3, help="student transformer layers (teacher: 6)")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch-size", type=int, default=128, help="questions per step")
    ap.add_argument(
        "--pair-weight", type=float, default=0.0, help="weight of the QQP pair loss (0: distil only)"
    )
    ap.add_argument(
        "--pairs-per-step", type=int, default=64, help="QQP training pairs per step (with --pair-weight)"
    )
    add_run_arguments(ap, OUT)
    args = ap.parse_args()

    import torch

    tokenizer, student = minilm(args.threads, args.seed)
    teacher = load_encoder(threads=1)
    data = qqp_vectors(teacher)
    src = source_model_dir()
    n = len(student.encoder.layer)
    keep = (
        [round(i * (n - 1) / max(args.layers - 1, 1)) for i in range(args.layers)] if args.layers > 1 else [0]
    )
    student.encoder.layer = torch.nn.ModuleList(student.encoder.layer[i] for i in keep)
    student.config.num_hidden_layers = args.layers
    for p in student.embeddings.parameters():
        p.requires_grad_(False)

    def embed(texts: list[str]) -> torch.Tensor:
        batch = tokenizer(texts, truncation=True, max_length=256, padding=True, return_tensors="pt")
        hidden = student(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

    def encode(texts: list[str]) -> np.ndarray:
        student.eval()
        out = np.zeros((len(texts), 384), np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch.no_grad():
            for s in range(0, len(order), 256):
                idx = order[s : s + 256]
                out[idx] = embed([texts[i] for i in idx]).numpy()
        student.train()
        return out

    splits = {s: data.splits[s] for s in ("validation", "test")}
    y = {s: np.array([p.label for p in ps]) for s, ps in splits.items()}

    def score(table: dict[str, np.ndarray], head=None, dtype: str = "f32") -> dict:
        a = {s: np.stack([table[p.a] for p in ps]) for s, ps in splits.items()}
        b = {s: np.stack([table[p.b] for p in ps]) for s, ps in splits.items()}
        if head is not None:
            a, b = ({s: head.apply(v[s]) for s in v} for v in (a, b))
        chosen, test = chosen_on_validation(a, b, y, dtype)
        half = balanced_on_validation(a, b, y, dtype)["test_at_validation_threshold"]
        return {
            "validation_f1": chosen.f1,
            "threshold": chosen.threshold,
            "test_f1": test.f1,
            "test": test.to_dict(),
            "balanced": {k: half[k] for k in ("threshold", "precision", "recall", "f1", "f1_range")},
        }

    def both(table: dict[str, np.ndarray]) -> dict:
        return {"raw_384": score(table), "learned_64_i8": score(table, head, "i8")}

    def refit(table: dict[str, np.ndarray]) -> dict:
        """learned-64 fitted on these vectors as `edgecache model fit-projection` fits it."""
        arrays = {
            s: tuple(np.stack([table[getattr(p, side)] for p in data.splits[s]]) for side in "ab")
            for s in ("train", "validation")
        }
        labels = {s: np.array([p.label for p in data.splits[s]], np.float32) for s in ("train", "validation")}
        fitted = fit_learned(
            (*arrays["train"], labels["train"]),
            (*arrays["validation"], labels["validation"]),
            np.stack([table[t] for t in data.texts("train")]),
            64,
            progress=lambda line: print(f"refit head: {line}", flush=True),
        )
        return score(table, fitted, "i8")

    eval_texts = sorted(data.table)
    head = shipped("learned-64")
    result: dict = {
        "benchmark": "encoder_distill",
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "student_layers_from_teacher": keep,
        "teacher": both(data.table),
    }
    print(f"teacher: raw F1 {result['teacher']['raw_384']['test_f1']:.4f}", flush=True)

    train = data.texts("train")
    targets = torch.tensor(np.stack([data.table[t] for t in train]))
    train_pairs = data.splits["train"]
    scale = torch.nn.Parameter(torch.tensor(20.0))
    bias = torch.nn.Parameter(torch.tensor(-16.0))
    params = [p for p in student.parameters() if p.requires_grad] + [scale, bias]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    total = int(math.ceil(len(train) / args.batch_size) * args.epochs)
    sched = warmup_then_decay(opt, total, 0.05)
    rng = np.random.default_rng(args.seed)
    student.train()
    step, t0 = 0, time.perf_counter()
    while step < total:
        perm = rng.permutation(len(train))
        for s in range(0, len(perm), args.batch_size):
            if step >= total:
                break
            rows = perm[s : s + args.batch_size]
            got = embed([train[i] for i in rows])
            loss = (1.0 - (got * targets[rows]).sum(-1)).mean()
            if args.pair_weight > 0:
                pairs = [
                    train_pairs[i] for i in rng.choice(len(train_pairs), args.pairs_per_step, replace=False)
                ]
                emb = embed([p.a for p in pairs] + [p.b for p in pairs])
                label = torch.tensor([float(p.label) for p in pairs])
                loss = loss + args.pair_weight * pair_loss(
                    emb[: len(pairs)], emb[len(pairs) :], label, scale, bias
                )
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % 50 == 0 or step == total:
                print(
                    f"step {step}/{total} loss {loss.item():.4f} ({time.perf_counter() - t0:.0f} s)",
                    flush=True,
                )
    train_seconds = time.perf_counter() - t0

    scored_texts = sorted({t for ps in splits.values() for p in ps for t in (p.a, p.b)})
    fp32_table = dict(zip(scored_texts, encode(scored_texts), strict=True))
    result["student_torch_fp32"] = {
        "raw_384": score(fp32_table),
        "learned_64_i8": score(fp32_table, head, "i8"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        student.eval().save_pretrained(str(folder))
        for f in src.iterdir():
            if f.name not in {"config.json", "model.safetensors"} and not (folder / f.name).exists():
                (folder / f.name).symlink_to(f)
        _export_fp32(folder, folder / "exported.onnx")
        _fuse(folder / "exported.onnx", folder / "fp32.onnx", folder)  # as the shipped build does
        _quantize(folder / "fp32.onnx", folder / "int8.onnx", "int8-per-channel")
        tok = current_model_dir() / TOKENIZER_FILE
        small = Encoder(folder / "int8.onnx", tok, threads=1)
        int8_table = dict(zip(eval_texts, small.encode(eval_texts), strict=True))
        result["student_int8"] = {
            "raw_384": score(int8_table),
            "learned_64_i8": score(int8_table, head, "i8"),
            "learned_64_refit_i8": refit(int8_table),
        }
        queries = [p.a for p in splits["test"][:400]]
        shipped_encoder = Encoder(current_model_dir() / "model.onnx", tok, threads=1)
        timed = latencies({"shipped_int8": shipped_encoder, "student_int8": small}, queries)
    p50 = {k: v["p50_ms"] for k, v in timed.items()}
    result["latency_one_query_one_thread"] = {
        "p50_ms": p50,
        "student_vs_shipped": p50["student_int8"] / p50["shipped_int8"],
    }
    result["train_questions"] = len(train)
    result["steps"] = total
    result["train_seconds"] = train_seconds
    for name in ("teacher", "student_torch_fp32", "student_int8"):
        for variant, r in result[name].items():
            print(
                f"{name} {variant}: test F1 {r['test_f1']:.4f}, half-duplicate F1 {r['balanced']['f1']:.4f}",
                flush=True,
            )
    print(
        f"one-query p50: shipped {p50['shipped_int8']:.2f} ms, student {p50['student_int8']:.2f} ms "
        f"({result['latency_one_query_one_thread']['student_vs_shipped']:.2f}x)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
