"""Workload replay: one mixed stream through the cache under a global and a category-aware policy.

The stream (fixed seed, simulated clock over 7 days, one user):
- intents from the shared data: QQP test duplicates (two wordings each: paraphrased
  repeats), other QQP test questions, CLINC150 val queries, MT-bench first turns and
  FreshQA questions, each with a popularity drawn from a Zipf law (s = 1.0);
- answers change over time, by what they depend on (the stream's truth, not the
  classifier's guess): FreshQA fast-changing facts every 6 hours, slow-changing every 3
  days; CLINC time-sensitive intents (weather, traffic, exchange rates, ...) every 30
  minutes and the user's own account/orders/calendar every 6 hours
  (`evaldata.CLINC_DEFAULT_CATEGORY`); everything else never. Serving an answer older
  than the current one is a stale hit;
- a hit is right only if it returns an entry of the same intent with the current answer;
  otherwise it is a false hit (`semantic`: another intent; `stale`: an old answer).
Every miss is a backend call whose answer is inserted. Response sizes by source (code
and writing answers are long, small talk short) are synthetic.

Also measured here:
- load adaptation: the backend is overloaded for day 4 (load level 1); the same stream
  with and without adaptation gives the backend traffic saved and the false hits it costs;
- the hybrid layout: lookup cost on a miss (no body read) and on a hit (one body read
  from a local folder) against bodies kept inline;
- the break-even hit rate for our measured lookup cost (the paper's analysis).

Encoder vectors are computed once (cached on disk) and served from a table, so the
replay measures policy, not the encoder; the encoder cost enters the break-even from
the real lookup latency measured at the end.

    .venv/bin/python benchmarks/replay.py  ->  benchmarks/results/replay.{json,png}
"""

from __future__ import annotations

import json
import random
import tempfile
import time
import tracemalloc
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edgecache import CacheConfig, LocalFolderStore, MemoryStore, SemanticCache
from edgecache.embcache import encode_cached
from edgecache.embedder import Embedded, shared_embedder
from edgecache.evaldata import CLINC_DEFAULT_CATEGORY, load_clinc, load_freshqa, load_mt_bench, load_qqp
from edgecache.evalrun import qqp_vectors
from edgecache.load import FixedSignal
from edgecache.policy import Policy
from edgecache.text import clean_query

HERE = Path(__file__).parent
OUT = HERE / "results" / "replay.json"
PLOT = HERE / "results" / "replay.png"
SEED = 7
DAYS = 7
REQUESTS = 40_000
ZIPF_S = 1.0
MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0
# How often the right answer changes, by true category of the intent.
CHANGE_EVERY = {
    "time_sensitive": 30 * MINUTE,
    "personal": 6 * HOUR,
    "fresh_fast": 6 * HOUR,
    "fresh_slow": 3 * DAY,
}
FRESHQA_TRUTH = {
    "fast-changing": "fresh_fast",
    "slow-changing": "fresh_slow",
    "never-changing": "stable_fact",
}
BODY_CHARS = {"qqp": 600, "clinc": 200, "mt_bench": 2000, "freshqa": 300}
OVERLOAD = (3 * DAY, 4 * DAY)
MAX_ENTRIES = 4000
LOAD_BOUND_SCALES = (1, 2, 4)
FALSE_HIT_TARGET = 0.02


def scaled_bounds(policy: Policy, scale: float) -> Policy:
    """The policy with every category's load bounds scaled (relax capped at 0.5)."""
    return replace(
        policy,
        categories=tuple(
            replace(
                c, max_relax=min(0.5, c.max_relax * scale), max_ttl_factor=1 + (c.max_ttl_factor - 1) * scale
            )
            for c in policy.categories
        ),
    )


@dataclass(frozen=True)
class Intent:
    key: str
    forms: tuple[str, ...]
    source: str
    truth: str  # true category: what its answer depends on


class TableEmbedder:
    """The shipped embedder's vectors, computed once in batches and looked up by text."""

    def __init__(self, texts: list[str]) -> None:
        real = shared_embedder("learned-64")
        self.real, self.dim, self.fingerprint = real, real.dim, real.fingerprint
        qqp = qqp_vectors(real.encoder)
        rest = [t for t in texts if t not in qqp.table]
        raw = encode_cached(real.encoder, rest, desc="encoding replay texts") if rest else np.zeros((0, 384))
        raw_of = {**qqp.table, **dict(zip(rest, raw, strict=True))}
        self.table = {clean_query(t).normalized: raw_of[t] for t in texts}

    def embed(self, texts: list[str]) -> Embedded:
        missing = [t for t in texts if t not in self.table]
        if missing:  # classifier seeds: encode for real
            self.table.update(zip(missing, self.real.embed(missing).raw, strict=True))
        raw = np.stack([self.table[t] for t in texts])
        return Embedded(self.real.projection.apply(raw), [False] * len(texts), raw)


def build_intents(rng: random.Random) -> list[Intent]:
    qqp = load_qqp()["test"]
    intents: list[Intent] = []
    seen: set[str] = set()
    for p in qqp:
        if p.label == 1 and p.a not in seen and p.b not in seen:
            intents.append(Intent(f"qqp:{len(intents)}", (p.a, p.b), "qqp", "qqp"))
            seen |= {p.a, p.b}
    singles = sorted({q for p in qqp for q in (p.a, p.b)} - seen)
    intents += [Intent(f"qqp1:{i}", (q,), "qqp", "qqp") for i, q in enumerate(rng.sample(singles, 3000))]
    intents += [
        Intent(f"clinc:{i}", (x.text,), "clinc", CLINC_DEFAULT_CATEGORY.get(x.label, "clinc_unmapped"))
        for i, x in enumerate(load_clinc("val"))
    ]
    intents += [
        Intent(f"mt:{i}", (x.text,), "mt_bench", "code" if x.label == "coding" else "mt_bench")
        for i, x in enumerate(load_mt_bench())
    ]
    intents += [
        Intent(f"fresh:{i}", (x.text,), "freshqa", FRESHQA_TRUTH[x.label])
        for i, x in enumerate(load_freshqa())
    ]
    return intents


def build_stream(intents: list[Intent], rng: random.Random) -> list[tuple[float, int, str]]:
    order = list(range(len(intents)))
    rng.shuffle(order)
    weights = np.zeros(len(intents))
    weights[order] = 1.0 / np.arange(1, len(intents) + 1) ** ZIPF_S
    picks = np.random.default_rng(SEED).choice(len(intents), size=REQUESTS, p=weights / weights.sum())
    times = sorted(rng.uniform(0, DAYS * DAY) for _ in range(REQUESTS))
    return [(t, int(i), rng.choice(intents[i].forms)) for t, i in zip(times, picks, strict=True)]


def version(intent: Intent, now: float) -> int:
    every = CHANGE_EVERY.get(intent.truth)
    return int(now // every) if every else 0


def replay(
    name: str,
    config: CacheConfig,
    embedder: TableEmbedder,
    intents: list[Intent],
    stream: list[tuple[float, int, str]],
    adapt_to_load: bool = False,
    feedback: bool = False,
) -> dict:
    """One pass of the stream. `feedback`: every hit is judged (right or wrong) through
    `cache.feedback`, as a user with a thumbs-up/down button would."""
    clock = [0.0]
    load = FixedSignal(0.0)
    cache = SemanticCache(
        "replay-user",
        config=config,
        embedder=embedder,
        clock=lambda: clock[0],
        load=load if adapt_to_load else None,
    )
    owner: dict[int, tuple[int, int]] = {}  # entry id -> (intent, answer version)
    per = defaultdict(Counter)
    hourly_backend = [0] * (DAYS * 24)
    overload = Counter()
    seen: set[int] = set()
    for now, idx, text in stream:
        clock[0] = now
        load.set(1.0 if OVERLOAD[0] <= now < OVERLOAD[1] else 0.0)
        intent = intents[idx]
        got = cache.lookup(text)
        cat = got.category or "?"
        per[cat]["lookups"] += 1
        per[f"truth:{intent.truth}"]["lookups"] += 1
        in_overload = OVERLOAD[0] <= now < OVERLOAD[1]
        if got.hit:
            entry_intent, entry_version = owner[got.entry_id]
            if entry_intent != idx:
                kind = "false_semantic"
            elif entry_version != version(intent, now):
                kind = "false_stale"
            else:
                kind = "right"
            for key in (cat, f"truth:{intent.truth}"):
                per[key]["hits"] += 1
                per[key][kind] += 1
            if in_overload:
                overload["hits"] += 1
                overload[kind] += 1
            if feedback:
                cache.feedback(got.entry_id, correct=kind == "right")
            continue
        hourly_backend[int(now // HOUR)] += 1
        if in_overload:
            overload["backend_calls"] += 1
            # The ceiling for any policy: a miss on an intent asked before.
            overload["avoidable_backend_calls"] += idx in seen
        seen.add(idx)
        answer_version = version(intent, now)
        body = f"{intent.key}#{answer_version} " + "x" * BODY_CHARS[intent.source]
        eid = cache.insert(text, body)
        owner[eid] = (idx, answer_version)
    stats = cache.stats()
    categories = {}
    for key, c in sorted(per.items()):
        lookups = c["lookups"]
        falses = c["false_semantic"] + c["false_stale"]
        row = {
            "lookups": lookups,
            "hit_rate": c["hits"] / lookups if lookups else 0.0,
            "right_hit_rate": c["right"] / lookups if lookups else 0.0,
            "false_hits": falses,
            "false_semantic": c["false_semantic"],
            "false_stale": c["false_stale"],
            "false_hit_share": falses / c["hits"] if c["hits"] else 0.0,
        }
        if key in stats.categories:
            held = stats.categories[key]
            row |= {"entries": held["entries"], "bytes": held["bytes"], "evictions": held["evictions"]}
        categories[key] = row
    total = Counter()
    for key, c in per.items():
        if not key.startswith("truth:"):
            total.update(c)
    out = {
        "policy": name,
        "lookups": total["lookups"],
        "hit_rate": total["hits"] / total["lookups"],
        "right_hit_rate": total["right"] / total["lookups"],
        "false_hits": total["false_semantic"] + total["false_stale"],
        "false_semantic": total["false_semantic"],
        "false_stale": total["false_stale"],
        "backend_calls": total["lookups"] - total["hits"],
        "entries": stats.entries,
        "bytes": sum(c["bytes"] for c in stats.categories.values()),
        "evictions": sum(c["evictions"] for c in stats.categories.values()),
        "overload_window": dict(overload),
        "hourly_backend_calls": hourly_backend,
        "categories": categories,
    }
    print(
        f"{name:28s} hit {out['hit_rate']:.3f} right {out['right_hit_rate']:.3f} "
        f"false {out['false_hits']} (stale {out['false_stale']}) backend {out['backend_calls']} "
        f"evictions {out['evictions']}",
        flush=True,
    )
    return out


class CountingFolder(LocalFolderStore):
    reads = 0

    def get(self, key: str) -> bytes | None:
        self.reads += 1
        return super().get(key)


def hybrid_layout(embedder: TableEmbedder, texts: list[str], n: int = 2000, probes: int = 1000) -> dict:
    """Lookup cost by outcome, with bodies inline and in a local-folder document store.

    Probes are stored texts (hits) and unseen texts (mostly misses; some hit a paraphrase):
    every lookup is filed under its real outcome, with the body reads it caused. The two
    layouts answer each probe in turn (first one, then the other, alternating) after a
    warm-up, so a slow spell of the machine or a cold first cache weighs on both alike.
    """
    stored, unseen = texts[:n], texts[n : n + probes // 2]
    probe_texts = stored[: probes // 2] + unseen
    layouts = ("inline", "hybrid")
    # The embedder table grows by the texts it first sees in their cleaned form; filled here,
    # that growth lands in neither layout's heap.
    SemanticCache("warm-up", store=MemoryStore(), embedder=embedder).insert_many(stored, ["r"] * n)
    with tempfile.TemporaryDirectory() as tmp:
        folders: dict[str, CountingFolder | None] = {"inline": None, "hybrid": CountingFolder(tmp)}
        caches: dict[str, SemanticCache] = {}
        out: dict[str, dict] = {}
        for layout in layouts:
            tracemalloc.start()
            cache = SemanticCache("layout", store=MemoryStore(), embedder=embedder, bodies=folders[layout])
            cache.insert_many(stored, [f"{i}:" + "y" * 1500 for i in range(len(stored))])
            held = tracemalloc.get_traced_memory()[0]
            tracemalloc.stop()
            caches[layout] = cache
            out[layout] = {
                "python_heap_bytes_per_entry": held / len(stored),
                "snapshot_bytes_per_entry": len(cache.to_bytes()) / len(cache),
            }
        for layout in layouts:
            for q in unseen[:50]:
                caches[layout].lookup(q)
        spent: dict[str, dict[str, list[float]]] = {layout: defaultdict(list) for layout in layouts}
        reads: dict[str, Counter] = {layout: Counter() for layout in layouts}
        for i, q in enumerate(probe_texts):
            for layout in layouts if i % 2 == 0 else layouts[::-1]:
                folder = folders[layout]
                before = folder.reads if folder else 0
                t0 = time.perf_counter()
                got = caches[layout].lookup(q)
                kind = "hit" if got.hit else "miss"
                spent[layout][kind].append(time.perf_counter() - t0)
                reads[layout][kind] += (folder.reads if folder else 0) - before
    for layout in layouts:
        out[layout] |= {
            kind: {
                "lookups": len(v),
                "p50_us": float(np.percentile(v, 50) * 1e6),
                "p99_us": float(np.percentile(v, 99) * 1e6),
                "body_reads": reads[layout][kind],
            }
            for kind, v in spent[layout].items()
        }
    return out


def real_lookup_seconds(samples: int = 200) -> float:
    """p50 of a real lookup (encoder + search + decision) on a miss, one encoder thread."""
    cache = SemanticCache("probe", store=MemoryStore())
    qqp = load_qqp()["validation"]
    cache.insert_many([p.a for p in qqp[:1000]], ["r"] * 1000)
    spent = []
    for p in qqp[1000 : 1000 + samples]:
        t0 = time.perf_counter()
        cache.lookup(p.b + " today")  # novel text: the encoder runs
        spent.append(time.perf_counter() - t0)
    return float(np.percentile(spent, 50))


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    runs = [results["policies"][k] for k in ("global, no TTL", "global, TTL 1 day", "category-aware")]
    cats = [c for c in runs[-1]["categories"] if c.startswith("truth:")]
    width = 0.8 / len(runs)
    for j, run in enumerate(runs):
        right = [run["categories"].get(c, {}).get("right_hit_rate", 0) for c in cats]
        false = [
            run["categories"].get(c, {}).get("false_hits", 0)
            / max(run["categories"].get(c, {}).get("lookups", 1), 1)
            for c in cats
        ]
        xs = np.arange(len(cats)) + j * width
        ax1.bar(xs, right, width, label=f"{run['policy']}: right hits")
        ax1.bar(xs, false, width, bottom=right, color="red", alpha=0.5 if j else 0.8)
    ax1.set_xticks(np.arange(len(cats)) + width, [c.removeprefix("truth:") for c in cats], rotation=30)
    ax1.set_ylabel("share of lookups (red: false hits)")
    ax1.set_title("by true category of the request")
    ax1.legend(fontsize=7)
    for key in ("category-aware", "category-aware + load", "category-aware + load (bounds x4)"):
        ax2.plot(results["policies"][key]["hourly_backend_calls"], label=key)
    ax2.axvspan(OVERLOAD[0] / HOUR, OVERLOAD[1] / HOUR, color="orange", alpha=0.2, label="backend overloaded")
    ax2.set_xlabel("hour")
    ax2.set_ylabel("backend calls per hour")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    rng = random.Random(SEED)
    intents = build_intents(rng)
    stream = build_stream(intents, rng)
    texts = sorted({f for i in intents for f in i.forms})
    print(f"{len(intents)} intents, {len(texts)} texts, {len(stream)} requests over {DAYS} days", flush=True)
    embedder = TableEmbedder(texts)
    one_category = Policy.from_dict({"categories": [{"name": "all"}], "fallback": "all", "classify": False})
    policies = {
        "global, no TTL": CacheConfig(policy=one_category, max_entries=MAX_ENTRIES),
        "global, TTL 1 day": CacheConfig(policy=one_category, ttl_seconds=DAY, max_entries=MAX_ENTRIES),
        "category-aware": CacheConfig(max_entries=MAX_ENTRIES),
    }
    results: dict = {"setup": {
        "seed": SEED, "days": DAYS, "requests": REQUESTS, "zipf_s": ZIPF_S, "intents": len(intents),
        "sources": dict(Counter(i.source for i in intents)), "max_entries": MAX_ENTRIES,
        "answer_change_every_s": CHANGE_EVERY, "overload_window_s": OVERLOAD,
    }, "policies": {}}  # fmt: skip
    for name, config in policies.items():
        results["policies"][name] = replay(name, config, embedder, intents, stream)
    base = results["policies"]["category-aware"]["overload_window"]
    results["load_adaptation"] = {
        "lookups_in_overload": base["hits"] + base["backend_calls"],
        "avoidable_backend_calls_in_overload": base["avoidable_backend_calls"],
        "bounds": {},
    }
    # The default per-category bounds, then the same bounds scaled up: the trade-off curve.
    for scale in LOAD_BOUND_SCALES:
        name = "category-aware + load" + ("" if scale == 1 else f" (bounds x{scale})")
        config = CacheConfig(max_entries=MAX_ENTRIES, policy=scaled_bounds(Policy(), scale))
        run = replay(name, config, embedder, intents, stream, adapt_to_load=True)
        results["policies"][name] = run
        adapted = run["overload_window"]
        results["load_adaptation"]["bounds"][f"x{scale}"] = {
            "backend_calls_in_overload": [base["backend_calls"], adapted["backend_calls"]],
            "traffic_reduction": 1 - adapted["backend_calls"] / base["backend_calls"],
            "false_hits_in_overload": [
                base.get("false_semantic", 0) + base.get("false_stale", 0),
                adapted.get("false_semantic", 0) + adapted.get("false_stale", 0),
            ],
        }
    target = CacheConfig(max_entries=MAX_ENTRIES, policy=Policy(false_hit_target=FALSE_HIT_TARGET))
    name = f"category-aware + feedback, target {FALSE_HIT_TARGET}"
    results["policies"][name] = replay(name, target, embedder, intents, stream, feedback=True)
    name = "category-aware + feedback, no target"
    results["policies"][name] = replay(
        name, CacheConfig(max_entries=MAX_ENTRIES), embedder, intents, stream, feedback=True
    )
    print("load adaptation:", results["load_adaptation"], flush=True)
    results["hybrid_layout"] = hybrid_layout(embedder, [t for t in texts if len(t) > 20])
    print("hybrid layout:", json.dumps(results["hybrid_layout"]), flush=True)
    lookup_s = real_lookup_seconds()
    results["break_even"] = {
        "measured_lookup_seconds_p50": lookup_s,
        # A lookup is paid on every request; a right hit saves one backend call. The cache
        # pays off above this right-hit rate (false hits only raise the bar).
        "break_even_hit_rate_for_llm_seconds": {str(s): lookup_s / s for s in (0.3, 1.0, 3.0, 10.0)},
        "per_category_right_hit_rate": {
            c: r["right_hit_rate"]
            for c, r in results["policies"]["category-aware"]["categories"].items()
            if not c.startswith("truth:")
        },
    }
    print("break-even:", json.dumps(results["break_even"]), flush=True)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(results, indent=1))
    plot(results, PLOT)
    print(f"wrote {OUT} and {PLOT}")


if __name__ == "__main__":
    main()
