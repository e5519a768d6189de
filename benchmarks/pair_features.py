"""Does a model of cosine and word overlap beat the cosine alone? (an experiment, not shipped)

Duplicate questions on QQP share most of their words; some non-duplicates with a high
cosine do not. A pair model scores (cached, asked) from the cosine the cache computes
(learned-64 head, i8 as stored) and lexical features of the two texts: word and content-word
Jaccard, content words found on one side only, length ratio, same first word, character
3-gram Jaccard, total length, the false-hit guards' verdict. Two models, fitted on the QQP
training split: logistic regression and gradient-boosted trees (scikit-learn, which the
[dev] install brings). Its probability then replaces the cosine: a hit when it is >= t.

Reported beside the default (cosine >= c, guards veto), each with its threshold chosen on
the whole validation split:
- pairwise: the whole test split, and MeanCache's half-duplicate construction at that
  threshold (`evalrun.balanced_report`), as `edgecache eval` reports them;
- retrieval on the half-duplicate construction: the cache's top 4 by cosine (a usearch i8
  index) re-scored by the pair model, the best one a hit when >= t and not vetoed.

    .venv/bin/python benchmarks/pair_features.py  ->  benchmarks/results/pair_features.json
        (~3 min on 2 cores once the QQP vectors are cached)
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression

from edgecache import metrics
from edgecache.evaldata import Pair
from edgecache.evalrun import MIN_PRECISION, QQPVectors, balanced_report, qqp_vectors
from edgecache.evaluation import emulate_storage, pairwise_hits, sweep_of
from edgecache.evaluation import retrieval as cosine_retrieval
from edgecache.projection import shipped
from edgecache.vectorindex import VectorIndex

OUT = Path(__file__).parent / "results" / "pair_features.json"
PROBABILITIES = tuple(round(t, 2) for t in np.arange(0.05, 0.951, 0.01))
TOP_K = 4
WORD = re.compile(r"[a-z0-9]+")
# Function words: what is left says what a question is about.
FUNCTION_WORDS = frozenset(
    "a an the is are was were be been of to in on for and or what how why which who when where do does"
    " did can could should would i my me you your it its this that with as at by from".split()
)
FEATURES = (
    "cosine",
    "word_jaccard",
    "content_word_jaccard",
    "content_words_one_side",
    "length_ratio",
    "same_first_word",
    "char3_jaccard",
    "vetoed",
    "total_words",
)
VETOED = FEATURES.index("vetoed")


def _jaccard(x: set, y: set) -> float:
    return len(x & y) / max(1, len(x | y))


def lexical(cached: str, asked: str) -> list[float]:
    wa, wb = WORD.findall(cached.lower()), WORD.findall(asked.lower())
    ca, cb = set(wa) - FUNCTION_WORDS, set(wb) - FUNCTION_WORDS
    ga = {cached.lower()[i : i + 3] for i in range(len(cached) - 2)}
    gb = {asked.lower()[i : i + 3] for i in range(len(asked) - 2)}
    return [
        _jaccard(set(wa), set(wb)),
        _jaccard(ca, cb),
        float(len(ca ^ cb)),
        min(len(wa), len(wb)) / max(1, len(wa), len(wb)),
        float(bool(wa) and bool(wb) and wa[0] == wb[0]),
        _jaccard(ga, gb),
    ]


class PairFeatures:
    """Feature rows for (cached, asked) pairs from the default cache's vectors and guards."""

    def __init__(self, data: QQPVectors) -> None:
        self.data = data
        self.head = shipped("learned-64")

    def stored(self, text: str) -> np.ndarray:
        """The vector as the i8 index holds it (unit length, rounded)."""
        return emulate_storage(self.head.apply(self.data.table[text])[None, :], "i8")[0]

    def asked(self, text: str) -> np.ndarray:
        # Normalized again, as `evaluation.pairwise_hits` does, so the cosines match its bits.
        v = self.head.apply(self.data.table[text])
        return v / np.linalg.norm(v)

    def row(self, cached: str, asked: str, cosine: float) -> list[float]:
        vetoed = float(self.data.veto(asked, cached) is not None)
        words = len(WORD.findall(cached)) + len(WORD.findall(asked))
        return [cosine, *lexical(cached, asked), vetoed, float(words)]

    def pairs(self, pairs: list[Pair]) -> np.ndarray:
        rows = []
        for p in pairs:
            s = self.stored(p.a)
            rows.append(self.row(p.a, p.b, float(s @ self.asked(p.b) / np.linalg.norm(s))))
        return np.array(rows)


def models(x: np.ndarray, y: np.ndarray) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    logistic = LogisticRegression(max_iter=2000).fit(x, y)
    trees = HistGradientBoostingClassifier(
        max_iter=300, learning_rate=0.05, max_leaf_nodes=15, random_state=0
    ).fit(x, y)
    return {
        "logistic": lambda z: logistic.predict_proba(z)[:, 1],
        "boosted trees": lambda z: trees.predict_proba(z)[:, 1],
    }


def pairwise_report(sweep: Callable[[str, np.ndarray | None], list[metrics.Scores]], labels) -> dict:
    chosen = metrics.best(sweep("validation", None))
    half = balanced_report(sweep, labels, whole_validation_threshold=chosen.threshold)
    return {
        "threshold": chosen.threshold,
        "validation_f1": chosen.f1,
        "test": metrics.at(sweep("test", None), chosen.threshold).to_dict(),
        "half_duplicate_test": half["test_at_whole_validation_threshold"],
    }


class Retrieval:
    """`evaluation.retrieval`'s protocol with the pair model choosing among the top candidates."""

    def __init__(self, feats: PairFeatures, pairs: list[Pair]) -> None:
        self.pairs = pairs
        self.firsts = sorted({p.a for p in pairs})
        self.key_of = {t: i for i, t in enumerate(self.firsts)}
        index = VectorIndex(64, "i8", 8)
        index.add(
            np.arange(len(self.firsts), dtype=np.uint64),
            np.stack([feats.head.apply(feats.data.table[t]) for t in self.firsts]),
        )
        self.found = []  # per query: (entry ids, feature rows), nearest first
        for p in pairs:
            keys, sims = index.search(feats.asked(p.b), TOP_K)
            ids = [int(k) for k in keys]
            rows = [feats.row(self.firsts[k], p.b, float(s)) for k, s in zip(ids, sims, strict=True)]
            self.found.append((ids, np.array(rows).reshape(len(ids), len(FEATURES))))

    def _scores(self, threshold: float, picks: list[int | None]) -> metrics.Scores:
        tp = fp = 0
        for p, pick in zip(self.pairs, picks, strict=True):
            if pick is None:
                continue
            if p.label == 1 and pick == self.key_of[p.a]:
                tp += 1
            else:
                fp += 1
        return metrics.scores(threshold, tp, fp, sum(p.label for p in self.pairs) - tp, len(self.pairs))

    def model_sweep(self, model: Callable[[np.ndarray], np.ndarray]) -> list[metrics.Scores]:
        """The pair model's best-scored candidate, a hit at or above t unless vetoed."""
        best: list[tuple[int, float] | None] = []
        for ids, feats in self.found:
            if not ids:
                best.append(None)
                continue
            prob = model(feats)
            prob[feats[:, VETOED] > 0] = -1.0
            j = int(np.argmax(prob))
            best.append((ids[j], float(prob[j])))
        return [self._scores(t, [b[0] if b and b[1] >= t else None for b in best]) for t in PROBABILITIES]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    started = time.time()
    data = qqp_vectors()
    feats = PairFeatures(data)
    x = {s: feats.pairs(data.splits[s]) for s in ("train", "validation", "test")}
    labels = {s: np.array([p.label for p in data.splits[s]]) for s in x}
    fitted = models(x["train"], labels["train"])
    print(f"features ready, models fitted ({time.time() - started:.0f} s)", flush=True)

    hits = {}
    for split in ("validation", "test"):
        a, b, _ = data.pair_arrays(split)
        vetoes = [data.veto(p.b, p.a) for p in data.splits[split]]
        hits[split] = pairwise_hits(feats.head.apply(a), feats.head.apply(b), "i8", vetoes=vetoes)
    pairwise = {
        "default (cosine + guards)": pairwise_report(
            lambda s, r: sweep_of(hits[s], labels[s], rows=r), labels
        )
    }
    for name, model in fitted.items():
        # Hits per probability threshold, in the shape `sweep_of` reads.
        hit = {s: model(x[s])[None, :] >= np.array(PROBABILITIES)[:, None] for s in ("validation", "test")}
        pairwise[name] = pairwise_report(
            lambda s, r, hit=hit: sweep_of(hit[s], labels[s], PROBABILITIES, rows=r), labels
        )
    for name, r in pairwise.items():
        half = r["half_duplicate_test"]
        print(f"pairwise {name}: test F1 {r['test']['f1']:.3f}, half-duplicate F1 {half['f1']:.3f}")

    def subset(split: str, rows: np.ndarray | None) -> list[Pair]:
        pairs = data.splits[split]
        return pairs if rows is None else [pairs[i] for i in rows]

    # One cache per (split, draw), as `edgecache eval` builds it: the draw's first questions.
    runs: dict[tuple[str, tuple[int, ...] | None], Retrieval] = {}

    def run(split: str, rows: np.ndarray | None) -> Retrieval:
        key = (split, None if rows is None else tuple(int(i) for i in rows))
        if key not in runs:
            runs[key] = Retrieval(feats, subset(split, rows))
        return runs[key]

    retrieval = {}
    scorers: dict[str, Callable[[str, np.ndarray | None], list[metrics.Scores]]] = {
        "default (cosine + guards)": lambda s, rows: cosine_retrieval(
            subset(s, rows), feats.asked, top_k=TOP_K, guard=data.veto
        )[0]
    }
    for name, model in fitted.items():
        scorers[name] = lambda s, rows, model=model: run(s, rows).model_sweep(model)
    for name, sweep in scorers.items():
        # As `edgecache eval` chooses it: on the whole validation split, precision floor first.
        whole = metrics.best(sweep("validation", None), MIN_PRECISION)
        half = balanced_report(sweep, labels, whole_validation_threshold=whole.threshold)
        retrieval[name] = {
            "threshold": whole.threshold,
            "half_duplicate_test": half["test_at_whole_validation_threshold"],
        }
        t = retrieval[name]["half_duplicate_test"]
        print(f"retrieval {name}: half-duplicate F1 {t['f1']:.3f} P {t['precision']:.3f}")

    result = {
        "benchmark": "pair_features",
        "features": list(FEATURES),
        "train_pairs": len(labels["train"]),
        "pairwise": pairwise,
        "retrieval_half_duplicate": retrieval,
        "seconds": time.time() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
