"""How far does fine-tuning the encoder itself move the QQP pairwise F1? (an experiment, not shipped)

The shipped default keeps all-MiniLM-L6-v2 frozen and learns a 64-d head on top
(`edgecache model fit-projection`). MeanCache's published 0.864 comes from training the
encoder. This script measures what training the top `--layers` transformer layers on the
QQP training split buys, with the head's losses (logistic loss on the scaled cosine of
each pair + in-batch InfoNCE over the duplicates), AdamW, linear warm-up/decay.

To fit a 2-core CPU, the frozen lower layers run once: their outputs for every QQP
question are kept (fp16) and only the top layers are trained from them. Evaluation is
the issue's pairwise protocol on raw 384-d fp32 embeddings (no head, no int8): threshold
chosen on validation, reported on test, after every `1/--evals` of the training.

    .venv/bin/python benchmarks/encoder_finetune.py --layers 2 --epochs 1
        ->  benchmarks/results/encoder_finetune.json   (~30 min on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
from encoder_experiments import (  # a sibling module
    add_run_arguments,
    chosen_on_validation,
    lower_states,
    minilm,
    padded,
    run_layers,
    warmup_then_decay,
)

from edgecache.evaldata import load_qqp
from edgecache.projection_fit import pair_loss

OUT = Path(__file__).parent / "results" / "encoder_finetune.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2, help="top transformer layers trained (of 6)")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--batch-size", type=int, default=64, help="QQP pairs per step")
    ap.add_argument("--infonce-weight", type=float, default=0.5)
    ap.add_argument("--evals", type=int, default=3, help="evaluations over the run")
    add_run_arguments(ap, OUT)
    args = ap.parse_args()

    import torch

    tokenizer, bert = minilm(args.threads, args.seed)
    bert.eval()
    splits = load_qqp()
    texts = sorted({t for s in splits.values() for p in s for t in (p.a, p.b)})
    index = {t: i for i, t in enumerate(texts)}
    n_layers = len(bert.encoder.layer)
    low = n_layers - args.layers

    t0 = time.perf_counter()
    states = lower_states(bert, low, tokenizer(texts, truncation=True, max_length=256)["input_ids"])
    print(f"frozen states of {len(texts)} questions in {time.perf_counter() - t0:.0f} s", flush=True)

    top = torch.nn.ModuleList(bert.encoder.layer[low:]).train()

    def embed_batch(rows: list[int]) -> torch.Tensor:
        hidden, mask = padded(states, rows)
        out = run_layers(top, hidden, mask)
        weights = mask.unsqueeze(-1).float()
        return torch.nn.functional.normalize((out * weights).sum(1) / weights.sum(1), dim=-1)

    def embed(rows: list[int]) -> np.ndarray:
        top.eval()
        out = np.zeros((len(rows), 384), np.float32)
        by_length = sorted(range(len(rows)), key=lambda j: states[rows[j]].shape[0])
        with torch.no_grad():
            for s in range(0, len(by_length), 512):
                js = by_length[s : s + 512]
                out[js] = embed_batch([rows[j] for j in js]).numpy()
        top.train()
        return out

    def evaluate(step: int) -> dict:
        a, b, y = {}, {}, {}
        for split in ("validation", "test"):
            pairs = splits[split]
            a[split] = embed([index[p.a] for p in pairs])
            b[split] = embed([index[p.b] for p in pairs])
            y[split] = np.array([p.label for p in pairs])
        chosen, test = chosen_on_validation(a, b, y)
        row = {
            "step": step,
            "validation_f1": chosen.f1,
            "threshold": chosen.threshold,
            "test_at_validation_threshold": test.to_dict(),
        }
        print(
            f"step {step}: validation F1 {chosen.f1:.4f}, "
            f"test F1 {row['test_at_validation_threshold']['f1']:.4f} at threshold {chosen.threshold}",
            flush=True,
        )
        return row

    history = [evaluate(0)]
    train = splits["train"]
    scale = torch.nn.Parameter(torch.tensor(20.0))
    bias = torch.nn.Parameter(torch.tensor(-16.0))
    opt = torch.optim.AdamW([*top.parameters(), scale, bias], lr=args.lr, weight_decay=0.01)
    total = int(math.ceil(len(train) / args.batch_size) * args.epochs)
    sched = warmup_then_decay(opt, total, 0.1)
    every = max(1, total // args.evals)
    rng = np.random.default_rng(args.seed)
    step, t0 = 0, time.perf_counter()
    while step < total:
        perm = rng.permutation(len(train))
        for s in range(0, len(perm), args.batch_size):
            if step >= total:
                break
            pairs = [train[i] for i in perm[s : s + args.batch_size]]
            emb = embed_batch([index[p.a] for p in pairs] + [index[p.b] for p in pairs])
            pa, pb = emb[: len(pairs)], emb[len(pairs) :]
            label = torch.tensor([float(p.label) for p in pairs])
            loss = pair_loss(pa, pb, label, scale, bias, args.infonce_weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % 50 == 0:
                elapsed = time.perf_counter() - t0
                print(f"step {step}/{total} loss {loss.item():.3f} ({elapsed:.0f} s)", flush=True)
            if step % every == 0 or step == total:
                history.append(evaluate(step))

    result = {
        "benchmark": "encoder_finetune",
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "train_pairs": len(train),
        "steps": total,
        "history": history,
        "train_seconds": time.perf_counter() - t0,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
