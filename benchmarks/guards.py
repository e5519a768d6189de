"""False-hit guards: adversarial false-hit rate with and without them, and what they cost on QQP.

Adversarial pairs (each must MISS; a "false hit" is a hit of the default decision):
- hand-written minimal pairs in benchmarks/data/adversarial_pairs.jsonl (enable/disable,
  2014/2018, Python/Java, Boston->Chicago / Chicago->Boston, ...) plus paraphrase controls
  that must still hit. The guard rules were written looking at this set: it shows
  coverage, not generalisation;
- QQP-derived: test-split questions edited mechanically (a number changed, an opposite
  word swapped in, a "not" inserted, a name replaced by one from another question). The
  polarity edits draw on the guards' own word list; the other three do not.
Cost: recall of the pairwise protocol on QQP test at the default threshold.

    .venv/bin/python benchmarks/guards.py   ->  benchmarks/results/guards.json
"""

from __future__ import annotations

import json
import random
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from edgecache.config import CacheConfig
from edgecache.decision import Candidate, decide
from edgecache.embedder import shared_embedder
from edgecache.evaldata import load_qqp
from edgecache.evalrun import qqp_vectors
from edgecache.evaluation import pairwise
from edgecache.guards import _OPPOSITES, veto

HERE = Path(__file__).parent
OUT = HERE / "results" / "guards.json"
PER_KIND = 150


def qqp_adversarial(questions: list[str], rng: random.Random) -> list[tuple[str, str, str]]:
    opposite = {w: v for a, b in _OPPOSITES for w, v in ((a, b), (b, a))}
    names = [m.group(0) for q in questions for m in re.finditer(r"(?<=\s)[A-Z][a-z]{3,}", q)]
    out: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    for q in rng.sample(questions, len(questions)):
        if (m := re.search(r"\b\d+\b", q)) and len(out["numbers"]) < PER_KIND:
            out["numbers"].append((q, q[: m.start()] + str(int(m.group(0)) + 1) + q[m.end() :], "numbers"))
        words = re.findall(r"[a-z]+", q)
        swap = next((w for w in words if w in opposite), None)
        if swap and len(out["polarity"]) < PER_KIND:
            edited = re.sub(rf"\b{swap}\b", opposite[swap], q, count=1)
            out["polarity"].append((q, edited, "polarity"))
        if " is " in q and " not " not in q and len(out["negation"]) < PER_KIND:
            out["negation"].append((q, q.replace(" is ", " is not ", 1), "negation"))
        if (m := re.search(r"(?<=\s)[A-Z][a-z]{3,}", q)) and len(out["entities"]) < PER_KIND:
            other = rng.choice(names)
            if other.lower() not in q.lower():
                out["entities"].append((q, q[: m.start()] + other + q[m.end() :], "entities"))
    return [p for kind in out.values() for p in kind]


def would_hit(sim: float, guard: str | None, config: CacheConfig) -> bool:
    return decide(Candidate(0, sim, None, False, False, None, guard=guard), config.thresholds, 0.0).hit


def main() -> None:
    config = CacheConfig()
    embedder = shared_embedder(config.projection)
    rng = random.Random(11)
    hand = [json.loads(line) for line in (HERE / "data" / "adversarial_pairs.jsonl").read_text().splitlines()]
    test_questions = sorted({t for p in load_qqp()["test"] for t in (p.a, p.b)})
    derived = qqp_adversarial(test_questions, rng)
    sets = {
        "hand_written": [(r["a"], r["b"], r["kind"], r["must_hit"]) for r in hand],
        "qqp_derived": [(a, b, kind, False) for a, b, kind in derived],
    }
    report: dict = {"threshold": config.threshold}
    for name, rows in sets.items():
        va = embedder.embed([r[0] for r in rows]).vectors
        vb = embedder.embed([r[1] for r in rows]).vectors
        sims = np.sum(va * vb, axis=1)
        by_kind: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for (a, b, kind, must_hit), sim in zip(rows, sims, strict=True):
            k = by_kind["paraphrase (must hit)" if must_hit else kind]
            k["pairs"] += 1
            k["hits_without_guards"] += would_hit(float(sim), None, config)
            k["hits_with_guards"] += would_hit(float(sim), veto(b, a), config)
        negatives = [k for kind, k in by_kind.items() if not kind.startswith("paraphrase")]
        n = sum(k["pairs"] for k in negatives)
        report[name] = {
            "by_kind": {kind: dict(k) for kind, k in by_kind.items()},
            "false_hit_rate_without_guards": sum(k["hits_without_guards"] for k in negatives) / n,
            "false_hit_rate_with_guards": sum(k["hits_with_guards"] for k in negatives) / n,
            "examples": [r[:3] for r in rows[:: max(1, len(rows) // 12)]],
        }
        print(
            f"{name}: {n} must-miss pairs, false hits {report[name]['false_hit_rate_without_guards']:.1%}"
            f" -> {report[name]['false_hit_rate_with_guards']:.1%} with guards",
            flush=True,
        )
    data = qqp_vectors(embedder.encoder)
    proj = embedder.projection
    for split in ("validation", "test"):
        a, b, y = data.pair_arrays(split)
        vetoes = [veto(p.b, p.a) for p in data.splits[split]]
        plain = pairwise(proj.apply(a), proj.apply(b), y, config.dtype, thresholds=[config.threshold])[0]
        guarded = pairwise(proj.apply(a), proj.apply(b), y, config.dtype, [config.threshold], vetoes)[0]
        report[f"qqp_{split}_pairwise_at_default_threshold"] = {
            "without_guards": plain.to_dict(),
            "with_guards": guarded.to_dict(),
            "recall_cost_points": 100 * (plain.recall - guarded.recall),
            "false_hits_removed": plain.fp - guarded.fp,
        }
        print(
            f"QQP {split}: recall {plain.recall:.4f} -> {guarded.recall:.4f}, precision "
            f"{plain.precision:.4f} -> {guarded.precision:.4f}, false hits {plain.fp} -> {guarded.fp}",
            flush=True,
        )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
