"""Does a cross-encoder that checks the nearest entry lift the cache's F1? (an experiment, not shipped)

A bi-encoder compares two vectors computed apart; a cross-encoder reads both questions
together and is the usual way to lift paraphrase accuracy. Here it would check the
candidates the default cache finds (learned-64 i8 + guards) and veto the ones it doubts.

To fit a 2-core CPU, the cross-encoder is all-MiniLM-L6-v2 reading "[CLS] a [SEP] b [SEP]":
its lower layers frozen (their outputs on every training pair computed once, kept fp16),
the top `--layers` layers and a logistic head on mean pooling trained on the QQP training
split (both orders of each pair). The combined rule is "cosine >= c and verifier >= t";
(c, t) is chosen on validation, test reported, beside the default alone (t off) chosen the
same way. Protocols: pairwise on the whole split and on MeanCache's half-duplicate
construction, cache retrieval on the latter. Last, the same verifier on the project's
same-topic follow-ups (`benchmarks/data/followup_pairs.jsonl`): does it tell a paraphrased
follow-up from another question on the topic better than the cosine?

    .venv/bin/python benchmarks/verifier_experiment.py
        ->  benchmarks/results/verifier_experiment.json   (~45 min on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from encoder_experiments import (  # siblings
    add_run_arguments,
    lower_states,
    minilm,
    padded,
    run_layers,
    warmup_then_decay,
)

from edgecache import metrics
from edgecache.decision import Candidate, Thresholds, first_hit
from edgecache.evaldata import load_followup_pairs
from edgecache.evalrun import balanced_report, qqp_vectors
from edgecache.evaluation import pairwise_hits, sweep_of
from edgecache.guards import veto
from edgecache.projection import shipped
from edgecache.vectorindex import VectorIndex

OUT = Path(__file__).parent / "results" / "verifier_experiment.json"
COSINES = tuple(float(round(c, 2)) for c in np.arange(0.60, 0.901, 0.02))
# 0.0: the verifier is off (the default cache alone).
VERIFIER = (0.0, *(float(round(t, 2)) for t in np.arange(0.05, 0.951, 0.05)))
COMBOS = [(c, t) for c in COSINES for t in VERIFIER]
TOP_K = 4


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2, help="top transformer layers trained (of 6)")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--batch-size", type=int, default=32, help="ordered pairs per step")
    add_run_arguments(ap, OUT)
    args = ap.parse_args()

    import torch

    tokenizer, bert = minilm(args.threads, args.seed)
    bert.eval()
    low = len(bert.encoder.layer) - args.layers
    top = torch.nn.ModuleList(bert.encoder.layer[low:])
    head = torch.nn.Linear(bert.config.hidden_size, 1)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)

    def frozen_states(pairs: list[tuple[str, str]]) -> list[torch.Tensor]:
        """Outputs of the frozen lower layers for each pair, in order, fp16."""
        enc = tokenizer([a for a, _ in pairs], [b for _, b in pairs], truncation=True, max_length=128)
        return lower_states(bert, low, enc["input_ids"], enc["token_type_ids"])

    def logits(states: list[torch.Tensor], rows: list[int]) -> torch.Tensor:
        hidden, mask = padded(states, rows)
        out = run_layers(top, hidden, mask)
        weights = mask.unsqueeze(-1).float()
        return head((out * weights).sum(1) / weights.sum(1)).squeeze(-1)

    known: dict[tuple[str, str], float] = {}

    def verify(pairs: list[tuple[str, str]]) -> np.ndarray:
        """P(same question) for each (a, b); each distinct pair scored once."""
        todo = sorted(set(pairs) - known.keys())
        if todo:
            known.update(zip(todo, score(todo), strict=True))
        return np.array([known[p] for p in pairs], np.float32)

    def score(pairs: list[tuple[str, str]]) -> np.ndarray:
        states = frozen_states(pairs)
        by_length = sorted(range(len(pairs)), key=lambda i: states[i].shape[0])
        out = np.zeros(len(pairs), np.float32)
        top.eval()
        with torch.no_grad():
            for s in range(0, len(by_length), 256):
                rows = by_length[s : s + 256]
                out[rows] = torch.sigmoid(logits(states, rows)).numpy()
        return out

    data = qqp_vectors()
    train = data.splits["train"]
    examples = [(p.a, p.b) for p in train] + [(p.b, p.a) for p in train]
    targets = torch.tensor([float(p.label) for p in train] * 2)
    t0 = time.perf_counter()
    train_states = frozen_states(examples)
    print(
        f"frozen layers 1-{low} on {len(examples)} ordered pairs: {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    opt = torch.optim.AdamW(
        [{"params": top.parameters(), "lr": args.lr}, {"params": head.parameters(), "lr": 1e-3}],
        weight_decay=0.01,
    )
    total = int(math.ceil(len(examples) / args.batch_size) * args.epochs)
    sched = warmup_then_decay(opt, total, 0.1)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    rng = np.random.default_rng(args.seed)
    step, t0 = 0, time.perf_counter()
    top.train()
    while step < total:
        perm = rng.permutation(len(examples))
        for s in range(0, len(perm), args.batch_size):
            if step >= total:
                break
            rows = perm[s : s + args.batch_size].tolist()
            loss = loss_fn(logits(train_states, rows), targets[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % 100 == 0:
                print(
                    f"step {step}/{total} loss {loss.item():.3f} ({time.perf_counter() - t0:.0f} s)",
                    flush=True,
                )
    train_seconds = time.perf_counter() - t0
    del train_states

    projection = shipped("learned-64")
    labels = {s: np.array([p.label for p in data.splits[s]]) for s in ("validation", "test")}
    hits: dict[str, np.ndarray] = {}
    for split in ("validation", "test"):
        pairs = data.splits[split]
        a, b, _ = data.pair_arrays(split)
        cosine_hits = pairwise_hits(
            projection.apply(a), projection.apply(b), "i8", COSINES, [veto(p.b, p.a) for p in pairs]
        )
        p_same = verify([(p.a, p.b) for p in pairs])
        hits[split] = np.stack([cosine_hits[COSINES.index(c)] & (p_same >= t) for c, t in COMBOS])
        print(f"verifier on {split} pairs done", flush=True)

    def pairwise_sweep(split: str, rows: np.ndarray | None) -> list[metrics.Scores]:
        return sweep_of(hits[split], labels[split], list(range(len(COMBOS))), rows=rows)

    def retrieval_sweep(split: str, rows: np.ndarray) -> list[metrics.Scores]:
        return retrieval_with_verifier([data.splits[split][i] for i in rows], data, projection, verify)

    result = {
        "benchmark": "verifier_experiment",
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "train_ordered_pairs": len(examples),
        "steps": total,
        "train_seconds": train_seconds,
        "pairwise_whole_split": compare(lambda split: pairwise_sweep(split, None)),
        "pairwise_half_duplicates": compare_balanced(pairwise_sweep, labels),
    }
    print(json.dumps(result["pairwise_whole_split"], indent=1), flush=True)
    result["retrieval_half_duplicates"] = compare_balanced(retrieval_sweep, labels)
    result["same_topic_follow_ups"] = follow_ups(projection, verify)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "config"}, indent=1))
    print(f"wrote {args.out}")


def named(score: metrics.Scores) -> dict:
    """A sweep point with its combo index replaced by the (cosine, verifier) thresholds."""
    cosine, verifier = COMBOS[int(score.threshold)]
    return {**score.to_dict(), "threshold": cosine, "verifier_threshold": verifier}


def compare(sweep: Callable[[str], list[metrics.Scores]]) -> dict:
    """Best (c, t) on validation against the best c with the verifier off; test at each."""
    val, test = sweep("validation"), sweep("test")
    off = [s for s in val if COMBOS[int(s.threshold)][1] == 0.0]
    out = {}
    for name, pool in (("with_verifier", val), ("default_alone", off)):
        chosen = metrics.best(pool)
        out[name] = {"validation": named(chosen), "test": named(metrics.at(test, chosen.threshold))}
    return out


def compare_balanced(sweep: Callable[[str, np.ndarray], list[metrics.Scores]], labels: dict) -> dict:
    """`compare` on MeanCache's half-duplicate construction (`evalrun.balanced_report`)."""
    cached: dict[tuple[str, bytes], list[metrics.Scores]] = {}

    def memo(split: str, rows: np.ndarray) -> list[metrics.Scores]:
        key = (split, rows.tobytes())
        if key not in cached:
            cached[key] = sweep(split, rows)
        return cached[key]

    def verifier_off(split: str, rows: np.ndarray) -> list[metrics.Scores]:
        return [s for s in memo(split, rows) if COMBOS[int(s.threshold)][1] == 0.0]

    out = {}
    for name, fn in (("with_verifier", memo), ("default_alone", verifier_off)):
        report = balanced_report(fn, labels)
        index = int(report["validation_best"]["threshold"])
        report["validation_best"] = {**report["validation_best"], "threshold": COMBOS[index][0]}
        report["test_at_validation_threshold"]["threshold"] = COMBOS[index][0]
        report["verifier_threshold"] = COMBOS[index][1]
        out[name] = report
    return out


def retrieval_with_verifier(pairs, data, projection, verify) -> list[metrics.Scores]:
    """`evaluation.retrieval` on the default cache, a verifier veto added as a guard."""
    firsts = sorted({p.a for p in pairs})
    own = {text: i for i, text in enumerate(firsts)}
    index = VectorIndex(projection.out_dim, "i8", 8)
    index.add(
        np.arange(len(firsts), dtype=np.uint64), projection.apply(np.stack([data.table[t] for t in firsts]))
    )
    found = []
    for p in pairs:
        keys, sims = index.search(projection.apply(data.table[p.b]), TOP_K)
        found.append([(int(k), float(s)) for k, s in zip(keys, sims, strict=True) if s >= COSINES[0]])
    asked = [(p.b, firsts[k]) for p, cands in zip(pairs, found, strict=True) for k, _ in cands]
    p_same = dict(zip(asked, verify(asked), strict=True))
    guards = {pair: veto(*pair) for pair in asked}
    positives = sum(p.label for p in pairs)
    out: dict[tuple[float, float], metrics.Scores] = {}
    for t in VERIFIER:

        def objection(pair: tuple[str, str], t: float = t) -> str | None:
            return guards[pair] or ("verifier" if p_same[pair] < t else None)

        candidates = [
            [Candidate(k, s, None, False, False, None, guard=objection((p.b, firsts[k]))) for k, s in cands]
            for p, cands in zip(pairs, found, strict=True)
        ]
        for c in COSINES:
            tp = fp = 0
            for p, cands in zip(pairs, candidates, strict=True):
                verdict = first_hit(cands, Thresholds(c, 1.0), 0.0)
                if verdict.hit and verdict.candidate is not None:
                    right = p.label == 1 and verdict.candidate.entry_id == own[p.a]
                    tp, fp = tp + right, fp + (not right)
            out[(c, t)] = metrics.scores(float(COMBOS.index((c, t))), tp, fp, positives - tp, len(pairs))
    return [out[combo] for combo in COMBOS]


def follow_ups(projection, verify) -> dict:
    """Same-topic follow-ups: AUC of the cosine and of the verifier, paraphrase vs other question."""
    from edgecache.embedder import shared_embedder

    pairs = load_followup_pairs()
    embedder = shared_embedder(projection.name)
    vectors = [embedder.embed([p.cached, p.asked]).vectors for p in pairs]
    cosine = np.array([float(v[0] @ v[1]) for v in vectors])
    p_same = verify([(p.cached, p.asked) for p in pairs])
    same = np.array([p.must_hit for p in pairs])

    def auc(score: np.ndarray) -> float:
        pos, neg = score[same], score[~same]
        return float(np.mean(pos[:, None] > neg[None, :]) + 0.5 * np.mean(pos[:, None] == neg[None, :]))

    return {
        "pairs": len(pairs),
        "same_question": int(same.sum()),
        "auc_cosine": auc(cosine),
        "auc_verifier": auc(p_same),
    }


if __name__ == "__main__":
    main()
