"""`edgecache bench`: lookup latency, insert throughput, bytes, RSS and cold start.

Lookups go through SemanticCache.lookup with the real encoder (encode + search +
decide) on one thread. The cache is filled with QQP questions whose encoder
vectors were computed by the same model beforehand (filling 100k entries by
encoding them would take minutes and measures nothing new); the lookup queries
are questions that were never inserted, so they are encoded live.
GPTCache runs in its own virtualenv (it needs torch) in the same run, filled at the
same sizes, and its lookups are timed in blocks that alternate with ours: the machine's
load drifts over seconds to minutes, and alternating puts both sides under the same drift,
so the ratio is measured on the same machine state.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .cache import SemanticCache
from .config import CacheConfig
from .embedder import Embedded, ProjectedEncoder, shared_embedder
from .errors import ConfigError
from .evaldata import Pair, data_file, load_qqp, qqp_path
from .evalrun import prepare_out_dir, qqp_vectors
from .machine import describe as describe_machine
from .stores import LocalFolderStore

GPTCACHE_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gptcache_baseline.py"
# GPTCache's bulk import encodes ~70 questions/s on one thread: 100k entries would take ~25 min.
GPTCACHE_MAX_ENTRIES = 10_000


class _PrecomputedFill:
    """Embedder that reuses the real encoder's stored vectors for known texts while filling.

    Once `live` is set, every text goes through the real encoder, so timed lookups pay
    for encoding as a user's would.
    """

    def __init__(self, real: ProjectedEncoder, table: dict[str, np.ndarray]) -> None:
        self.real, self.table = real, table
        self.dim, self.fingerprint = real.dim, real.fingerprint
        self.live = False

    def unseen(self, texts: list[str]) -> list[tuple[str, ...]]:
        # Without it the cache would skip the guards' check of what the model cannot see.
        return self.real.unseen(texts)

    def embed(self, texts: list[str]) -> Embedded:
        if not self.live and all(t in self.table for t in texts):
            raw = np.stack([self.table[t] for t in texts])
            return Embedded(self.real.projection.apply(raw), [False] * len(texts), raw)
        return self.real.embed(texts)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _percentiles(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {
        "p50_ms": float(np.percentile(a, 50)),
        "p90_ms": float(np.percentile(a, 90)),
        "p99_ms": float(np.percentile(a, 99)),
        "mean_ms": float(a.mean()),
        "n": len(ms),
    }


def timings(call: Callable[[str], object], texts: list[str]) -> list[float]:
    """Milliseconds of `call` on each text in turn."""
    ms = []
    for t in texts:
        t0 = time.perf_counter()
        call(t)
        ms.append((time.perf_counter() - t0) * 1000)
    return ms


def latency(call: Callable[[str], object], texts: list[str]) -> dict:
    """Percentiles of `call` on each text in turn, in milliseconds."""
    return _percentiles(timings(call, texts))


def cold_start(store_dir: Path) -> dict:
    """A fresh interpreter: import + model load + first lookup on a saved cache."""
    code = (
        "import time; t0=time.perf_counter()\n"
        "from edgecache import SemanticCache, LocalFolderStore\n"
        "t1=time.perf_counter()\n"
        f"c=SemanticCache('bench-cold', store=LocalFolderStore({str(store_dir)!r}))\n"
        "t2=time.perf_counter(); c.lookup('how do I learn python quickly?'); t3=time.perf_counter()\n"
        "print(t1-t0, t2-t1, t3-t2)"
    )
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        wall = time.perf_counter() - t0
        imp, load, first = (float(x) for x in out.stdout.split())
        runs.append({"process_wall_s": wall, "import_s": imp, "load_s": load, "first_lookup_s": first})
    best = min(runs, key=lambda r: r["process_wall_s"])
    return {
        "runs": runs,
        "best": best,
        "in_process_s": best["import_s"] + best["load_s"] + best["first_lookup_s"],
    }


class GPTCacheSide:
    """GPTCache 0.1.44 in its venv's Python (benchmarks/gptcache_baseline.py --serve), filled
    with `entries` QQP questions, timing its lookups in the blocks it is asked for."""

    def __init__(self, python: str, entries: int, queries: int) -> None:
        self.queries = queries
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in close()
        self._proc = subprocess.Popen(
            [
                python,
                str(GPTCACHE_SCRIPT),
                "--serve",
                "--n-entries",
                str(entries),
                "--n-queries",
                str(queries),
                "--input",
                str(qqp_path()),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        try:
            self._read()  # the ready line, once its cache is filled
        except (RuntimeError, ValueError):
            self.close()
            raise

    def _read(self) -> dict:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            self._proc.wait()
            self._stderr.seek(0)
            raise RuntimeError(f"the GPTCache baseline exited: {self._stderr.read()[-2000:]}")
        return json.loads(line)

    def _ask(self, request: dict) -> dict:
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(request) + "\n")
        self._proc.stdin.flush()
        return self._read()

    def lookups(self, start: int, stop: int) -> list[float]:
        return self._ask({"get": [start, stop]})["ms"]

    def finish(self) -> dict:
        """Its inserts and encoder alone are timed now; the report covers every lookup asked for."""
        return self._ask({"finish": True})

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        self._stderr.close()


def alternate_lookups(
    ours: Callable[[str], object], texts: list[str], theirs: GPTCacheSide, blocks: int = 10
) -> tuple[list[float], dict]:
    """Our lookups on `texts`, timed in `blocks` that alternate with blocks of GPTCache's, and
    its report. Should GPTCache fail midway, ours go on alone and the report holds the error.

    The first few lookups of each of our blocks run ~1 ms slower, on caches left cold (as
    after an idle pause as long: measured, no slower than that); ten blocks of 100 keep that
    to a few percent of ours and still put both sides under the same load, which drifts over
    seconds to minutes here."""
    mine = np.array_split(np.arange(len(texts)), blocks)
    other = np.array_split(np.arange(theirs.queries), blocks)
    ms: list[float] = []
    error = None
    for a, b in zip(mine, other, strict=True):
        ms += timings(ours, [texts[i] for i in a])
        if len(b) and error is None:
            try:
                theirs.lookups(int(b[0]), int(b[-1]) + 1)
            except (OSError, RuntimeError, ValueError) as exc:
                error = str(exc)
    if error is None:
        try:
            return ms, {**theirs.finish(), "alternated_with_ours_in_blocks": blocks}
        except (OSError, RuntimeError, ValueError) as exc:
            error = str(exc)
    return ms, {"error": error}


# Questions timed as single and as batched inserts.
SINGLE_INSERTS, BULK_INSERTS = 500, 2000


@dataclass
class BenchTexts:
    query_sets: dict[int, list[str]]
    embed_sets: dict[int, list[str]]
    insert_texts: list[str]
    bulk_texts: list[str]
    pool: list[str]  # what the caches are filled from


def bench_texts(splits: dict[str, list[Pair]], sizes: list[int], queries: int) -> BenchTexts:
    """The QQP questions each part of the bench uses, none used twice; a ConfigError when the
    data holds too few for these sizes and query counts."""
    firsts = sorted({p.a for split in splits.values() for p in split})
    seconds = sorted({p.b for split in splits.values() for p in split} - set(firsts))
    timed = 2 * len(sizes) * queries
    if timed + SINGLE_INSERTS + BULK_INSERTS > len(seconds):
        most = (len(seconds) - SINGLE_INSERTS - BULK_INSERTS) // (2 * len(sizes))
        raise ConfigError(
            f"--queries {queries} with {len(sizes)} sizes needs {timed + SINGLE_INSERTS + BULK_INSERTS} "
            f"QQP questions that are never inserted; the data has {len(seconds)}"
            + (f", enough for --queries {most} at most" if most >= 1 else "")
        )
    rng = np.random.default_rng(7)
    rng.shuffle(firsts)
    rng.shuffle(seconds)
    # Plain QQP questions never inserted, as GPTCache's side is timed on; a distinct set
    # per size keeps the embedder's LRU of recent texts out of the timing.
    query_sets = {n: seconds[i * queries : (i + 1) * queries] for i, n in enumerate(sizes)}
    embed_sets = {
        n: seconds[(len(sizes) + i) * queries : (len(sizes) + i + 1) * queries] for i, n in enumerate(sizes)
    }
    rest = seconds[timed:]
    pool = firsts + rest[SINGLE_INSERTS + BULK_INSERTS :]
    if max(sizes) > len(pool):
        raise ConfigError(
            f"--sizes {max(sizes)} is more than the {len(pool)} distinct QQP questions left to fill "
            f"a cache with (at --queries {queries})"
        )
    return BenchTexts(
        query_sets,
        embed_sets,
        rest[:SINGLE_INSERTS],
        rest[SINGLE_INSERTS : SINGLE_INSERTS + BULK_INSERTS],
        pool,
    )


def run_bench(
    out_dir: Path, sizes: list[int], queries: int = 1000, gptcache_python: str | None = None
) -> dict:
    config = CacheConfig()
    data_file(qqp_path())  # before the results folder is made
    prepare_out_dir(out_dir)
    splits = load_qqp()
    texts = bench_texts(splits, sizes, queries)  # before the minutes of encoding
    query_sets, embed_sets, pool = texts.query_sets, texts.embed_sets, texts.pool
    insert_texts, bulk_texts = texts.insert_texts, texts.bulk_texts
    real = shared_embedder(config.projection, threads=1)
    data = qqp_vectors(real.encoder, splits)
    warmup_texts = [f"warm-up question {i}" for i in range(20)]
    fill = _PrecomputedFill(real, data.table)
    results: dict = {
        "machine": describe_machine(),
        "config": config.to_dict(),
        "sizes": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            side = None
            if gptcache_python and n <= GPTCACHE_MAX_ENTRIES:
                print(f"filling GPTCache with {n} entries (~{n // 70 + 10} s)", flush=True)
                try:
                    side = GPTCacheSide(gptcache_python, n, min(queries, 300))
                except (OSError, RuntimeError) as exc:
                    results.setdefault("gptcache", {})[str(n)] = {"error": str(exc)}
            fill.live = False
            cache = SemanticCache("bench", config=config, embedder=fill)
            query_texts = query_sets[n]
            t0 = time.perf_counter()
            cache.insert_many(pool[:n], ["cached answer"] * n)
            fill_s = time.perf_counter() - t0
            fill.live = True
            saved = cache.to_bytes()
            for q in warmup_texts:
                cache.lookup(q)
            if side is not None:
                try:
                    ms, report = alternate_lookups(cache.lookup, query_texts, side)
                finally:
                    side.close()
                lookups = _percentiles(ms)
                results.setdefault("gptcache", {})[str(n)] = report
            else:
                lookups = latency(cache.lookup, query_texts)
            row = {
                "lookup": lookups,
                # The same queries again: served from the embedder's LRU of recent texts.
                "lookup_repeated_query": latency(cache.lookup, query_texts),
                # The encoder and projection alone, on texts they have not seen: a lookup's cost
                # beyond this is search, decision and the caches the encoder run left cold.
                "embed_only": latency(lambda t: real.embed([t]), embed_sets[n]),
                "fill_seconds_precomputed_vectors": fill_s,
                "snapshot_bytes_per_entry": len(saved) / n,
                "index_serialized_bytes_per_entry": cache.stats().index_bytes / n,
                "max_rss_mb": _rss_mb(),
            }
            results["sizes"][str(n)] = row
            print(
                f"{n:>7} entries: lookup p50 {row['lookup']['p50_ms']:.2f} ms "
                f"(repeated query {row['lookup_repeated_query']['p50_ms']:.2f} ms, "
                f"encoder + projection alone {row['embed_only']['p50_ms']:.2f} ms) "
                f"p99 {row['lookup']['p99_ms']:.2f} ms, "
                f"index {row['index_serialized_bytes_per_entry']:.0f} B/entry",
                flush=True,
            )
        live = SemanticCache("bench-insert", config=config, embedder=real)
        t0 = time.perf_counter()
        for t in insert_texts:
            live.insert(t, "cached answer")
        single = len(insert_texts) / (time.perf_counter() - t0)
        bulk_cache = SemanticCache("bench-insert-bulk", config=config, embedder=real)
        t0 = time.perf_counter()
        bulk_cache.insert_many(bulk_texts, ["cached answer"] * len(bulk_texts))
        bulk = len(bulk_texts) / (time.perf_counter() - t0)
        results["insert_per_second"] = {"single": single, "batched_64": bulk}
        print(f"inserts/s single {single:.0f}, batched {bulk:.0f}", flush=True)
        cold_dir = Path(tmp) / "cold"
        fill.live = False
        small = SemanticCache("bench-cold", store=LocalFolderStore(cold_dir), config=config, embedder=fill)
        small.insert_many(pool[:1000], ["cached answer"] * 1000)
        small.save()
        results["cold_start"] = cold_start(cold_dir)
        print(f"cold start {results['cold_start']['best']}", flush=True)
    for n, row in results.get("gptcache", {}).items():
        ours = results["sizes"].get(n, {}).get("lookup", {}).get("p50_ms")
        if "get_p50_ms" in row and ours:
            row["ratio_gptcache_over_edgecache_p50"] = row["get_p50_ms"] / ours
            print(
                f"GPTCache {n}: lookup p50 {row['get_p50_ms']:.1f} ms -> edgecache is "
                f"{row['ratio_gptcache_over_edgecache_p50']:.1f}x faster",
                flush=True,
            )
    (out_dir / "bench.json").write_text(json.dumps(results, indent=2))
    return results
