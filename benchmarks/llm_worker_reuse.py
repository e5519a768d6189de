"""The LLM worker's context reuse: latency of requests that share one long context, with
the compressed-context LRU on vs. off.

    .venv/bin/python benchmarks/llm_worker_reuse.py [--tokens 1500] [--questions 3] [--threads 1]
        ->  benchmarks/results/llm_worker_reuse.json

Runs `LLMService` (the worker's core, no Ray/HTTP: those add a constant few ms) with the
built SmolLM2 copy (`edgecache llm build`). The context is real text (MT-bench questions
from ../shared/data) cut to --tokens tokens with a needle in the middle; each question is
sent as a chat request with that `context`. "off" clears the LRU before every request, so
each one prefills and compresses the context again; "on" keeps it, so only the first does.
Greedy decoding: both modes give the same answers (checked and recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from edgecache.machine import describe as describe_machine

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "llm_worker_reuse.json"
DATA = HERE.parents[1] / "shared" / "data" / "categories" / "mt_bench_questions.jsonl"
NEEDLE = "The access code for the vault is 4817."
QUESTIONS = (
    "What is the access code for the vault? Answer with the number.",
    "Which number opens the vault?",
    "Repeat the access code for the vault.",
    "What is the vault's code?",
)


def build_context(tokenizer: Any, tokens: int) -> str:
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    text = " ".join(t for r in rows for t in r["turns"])
    ids = tokenizer(text)["input_ids"][:tokens]
    text = tokenizer.decode(ids)
    middle = len(text) // 2
    return f"{text[:middle]} {NEEDLE} {text[middle:]}"


def run(args: argparse.Namespace) -> dict[str, Any]:
    from edgecache.llm.protocol import WorkerConfig
    from edgecache.llm.worker import LLMService

    svc = LLMService(
        WorkerConfig(press="snapkv", budget=0.25, torch_threads=args.threads, max_new_tokens=args.max_tokens)
    )
    context = build_context(svc.tokenizer, args.tokens)
    # The machine is shared: absolute times scale with its load, the ratio much less.
    load_before = os.getloadavg()
    questions = QUESTIONS[: args.questions]
    records = []
    for press, budget in (("full", 1.0), ("snapkv", 0.25), ("snapkv", 0.1)):
        answers: dict[str, list[str]] = {}
        for mode in ("off", "on"):
            svc.contexts.clear()
            for i, question in enumerate(questions):
                if mode == "off":
                    svc.contexts.clear()
                body = {
                    "messages": [{"role": "user", "content": question}],
                    "context": context,
                    "max_tokens": args.max_tokens,
                    "kv_press": press,
                    "kv_budget": budget,
                }
                t0 = time.perf_counter()
                reply = svc.handle("POST", "/v1/chat/completions", json.dumps(body).encode())
                seconds = time.perf_counter() - t0
                assert reply.status == 200, reply.body
                out = reply.body
                answers.setdefault(mode, []).append(out["choices"][0]["message"]["content"])
                records.append(
                    {
                        "press": press,
                        "budget": budget,
                        "reuse": mode,
                        "question": i,
                        "seconds": round(seconds, 4),
                        **{
                            k: out["kv_cache"][k]
                            for k in ("context_tokens", "kept_tokens", "reused", "prefill_ms", "decode_ms")
                        },
                        "completion_tokens": out["usage"]["completion_tokens"],
                        "answer": out["choices"][0]["message"]["content"],
                    }
                )
                print(json.dumps(records[-1]))
        assert answers["on"] == answers["off"], (press, budget, answers)
    summary = []
    for press, budget in sorted({(r["press"], r["budget"]) for r in records}):
        rows = [r for r in records if (r["press"], r["budget"]) == (press, budget)]
        # the first question of "on" is a miss like every "off" request; the rest are hits
        off = [r["seconds"] for r in rows if r["reuse"] == "off"]
        hits = [r["seconds"] for r in rows if r["reuse"] == "on" and r["reused"]]
        summary.append(
            {
                "press": press,
                "budget": budget,
                "median_s_without_reuse": round(statistics.median(off), 3),
                "median_s_with_reuse_hit": round(statistics.median(hits), 3),
                "speedup": round(statistics.median(off) / statistics.median(hits), 2),
                "answers_identical": True,
            }
        )
    return {
        "model": svc.model_name,
        "device": svc.device,
        "threads": args.threads,
        "context_tokens": records[0]["context_tokens"],
        "max_tokens": args.max_tokens,
        "questions": len(questions),
        "machine": describe_machine(),
        "loadavg_1_5_15_before_after": [list(load_before), list(os.getloadavg())],
        "summary": summary,
        "records": records,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1500)
    parser.add_argument("--questions", type=int, default=3, choices=range(2, len(QUESTIONS) + 1))
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for row in result["summary"]:
        print(row)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
