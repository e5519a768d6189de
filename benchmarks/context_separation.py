"""How well does a context threshold keep apart first turns on different topics?

The contextual evaluation chooses `context_threshold` on few negatives of the kind that
matters most ("What is its population?" after France vs after Japan: 1-2 per half). This
measures the context vectors directly, on every first turn of MeanCache's new_claude and d1
files, as the cache embeds them (the default projection):

- paraphrased first turns (new_claude's u0 / u0_duplicate): share at or above each threshold;
- pairs of different first turns (texts that differ after case and a final "?"): share at or
  above each threshold, how many of those the guards veto as context chains, and the pairs
  in a band of thresholds to read by hand. Some are the same question worded twice in two
  files, so this counts an upper bound on different topics.

    .venv/bin/python benchmarks/context_separation.py  ->  benchmarks/results/context_separation.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from edgecache.config import CacheConfig
from edgecache.embedder import shared_embedder
from edgecache.evaldata import load_contextual
from edgecache.guards import veto
from edgecache.machine import describe
from edgecache.text import clean_query

OUT = Path(__file__).parent / "results" / "context_separation.json"
THRESHOLDS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)


def _key(text: str) -> str:
    return text.lower().rstrip(" ?")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--band", type=float, nargs=2, default=(0.60, 0.75), help="list pairs in [low, high)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    t0 = time.perf_counter()
    config = CacheConfig()
    embedder = shared_embedder(config.projection)
    data = load_contextual()
    conversations = data["new_claude"] + data["d1"]
    firsts = sorted({clean_query(c.u0).normalized for c in conversations})
    paraphrased = sorted(
        {
            (clean_query(c.u0).normalized, clean_query(c.u0_paraphrase).normalized)
            for c in conversations
            if c.u0_paraphrase
        }
    )
    vec = dict(zip(firsts, embedder.embed(firsts).vectors, strict=True))
    para_texts = sorted({b for _, b in paraphrased} - vec.keys())
    if para_texts:
        vec.update(zip(para_texts, embedder.embed(para_texts).vectors, strict=True))
    para_sims = np.array([float(vec[a] @ vec[b]) for a, b in paraphrased])

    pairs = [(a, b) for i, a in enumerate(firsts) for b in firsts[i + 1 :] if _key(a) != _key(b)]
    matrix = np.stack([vec[t] for t in firsts])
    index = {t: i for i, t in enumerate(firsts)}
    sims = matrix @ matrix.T
    pair_sims = np.array([float(sims[index[a], index[b]]) for a, b in pairs])
    lo, hi = args.band
    # The guards run only where the cosine would let a hit through: at the lowest threshold
    # tabled or listed.
    vetoed = {k: veto(*pairs[k]) for k in np.flatnonzero(pair_sims >= min(*THRESHOLDS, lo))}

    table = []
    for t in THRESHOLDS:
        above = np.flatnonzero(pair_sims >= t)
        table.append(
            {
                "context_threshold": t,
                "paraphrased_first_turns_at_or_above": round(float(np.mean(para_sims >= t)), 4),
                "different_first_turns_at_or_above": int(above.size),
                "different_first_turns_share": round(float(above.size / len(pairs)), 5),
                "of_those_vetoed_by_guards": int(sum(vetoed[k] is not None for k in above)),
            }
        )
    band = [
        {"cosine": round(float(pair_sims[k]), 3), "a": pairs[k][0], "b": pairs[k][1], "veto": vetoed[k]}
        for k in np.argsort(-pair_sims)
        if lo <= pair_sims[k] < hi
    ]
    result = {
        "machine": describe(),
        "model": embedder.encoder.fingerprint,
        "projection": config.projection,
        "vectors": embedder.fingerprint,
        "first_turns": len(firsts),
        "paraphrased_first_turns": len(paraphrased),
        "different_first_turn_pairs": len(pairs),
        "table": table,
        "band": {"low": lo, "high": hi, "pairs": band},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{len(firsts)} first turns, {len(pairs)} pairs of different ones, {len(paraphrased)} paraphrased")
    print("threshold  paraphrases kept  different pairs at/above (vetoed by guards)")
    for row in table:
        print(
            f"{row['context_threshold']:>9.2f}  {row['paraphrased_first_turns_at_or_above']:>16.3f}"
            f"  {row['different_first_turns_at_or_above']:>5} ({row['of_those_vetoed_by_guards']})"
        )
    print(f"{len(band)} pairs in [{lo}, {hi}); wrote {args.out}")


if __name__ == "__main__":
    main()
