"""Zero-shot query categories (edgecache/classifier.py) measured on real, labelled queries.

    .venv/bin/python benchmarks/categories.py   ->  benchmarks/results/categories.json

Data: ../shared/data/categories (see its README). Every seed text below and in
`edgecache.classifier.DEFAULT_SEEDS` was written by hand for this project; none is taken
from the evaluation data.

Honesty rules:
- CLINC150: choices (prototype vs nearest seed vs k-NN) are made on `train` only;
  `val` is only reported. Few-shot examples come from `train`, never from `val`.
- FreshQA: `TEST` (500) is reported; `DEV` (100) is left unused.
- MT-bench: 80 questions, nothing is chosen on them.
- min_score stays None (no fallback below a score): nothing is tuned for it.
Both spaces are measured: the cache's projected 64-d vectors (learned-64) and the raw
384-d encoder vectors.
"""

from __future__ import annotations

import json
import random
import sys
import timeit
from pathlib import Path

import numpy as np

from edgecache.classifier import DEFAULT_SEEDS, CategoryClassifier
from edgecache.embcache import encode_cached
from edgecache.embedder import shared_embedder
from edgecache.evaldata import CLINC_DEFAULT_CATEGORY, load_clinc, load_freshqa, load_mt_bench

HERE = Path(__file__).parent
OUT = HERE / "results" / "categories.json"
# learned-64: what the cache stores and passes; raw-384: the encoder before projection;
# pca-64: the same size as learned-64 but keeping the directions of most variance.
SPACES = {"learned-64": "learned-64", "raw-384": "none", "pca-64": "pca-64"}
# Candidates for the classifier's method, compared on CLINC train only.
CANDIDATES = {
    "prototype": {"method": "prototype"},
    "nearest": {"method": "nearest"},
    "knn-3": {"method": "knn", "k": 3},
    "knn-5": {"method": "knn", "k": 5},
}
SHOTS = (0, 1, 5, 10)
REPEATS = 5  # few-shot draws, seeds 0..4

# Short domain descriptions plus a few generic example queries, written by hand (not from CLINC).
CLINC_SEEDS: dict[str, dict] = {
    "banking": {
        "description": "Bank accounts: balances, transfers, bills, payments, transactions and fraud.",
        "examples": [
            "how much is in my checking account",
            "send money to my savings",
            "pay my electricity bill",
            "list my last purchases",
            "someone stole money from my account",
            "what's my account routing number",
        ],
    },
    "credit_cards": {
        "description": "Credit cards: limits, rewards, interest, declined or lost cards, applications.",
        "examples": [
            "raise the limit on my visa",
            "my card got rejected at the store",
            "how many points have I earned on my card",
            "I lost my credit card",
            "when does my card expire",
            "apply for a new credit card",
        ],
    },
    "kitchen_and_dining": {
        "description": "Food, cooking, recipes, nutrition and restaurants.",
        "examples": [
            "how do I bake banana bread",
            "how much protein is in an egg",
            "book a table for four tonight",
            "what can I use instead of butter",
            "is this restaurant any good",
            "how long should I roast a chicken",
        ],
    },
    "home": {
        "description": "Home assistant tasks: music, reminders, to-do and shopping lists, calendar, "
        "smart devices, online orders.",
        "examples": [
            "play some jazz",
            "turn off the living room lights",
            "put eggs on my grocery list",
            "remind me to water the plants",
            "what's on my schedule today",
            "skip this track",
        ],
    },
    "auto_and_commute": {
        "description": "Cars and getting around: driving directions, traffic, fuel, maintenance, rides.",
        "examples": [
            "how do I get to the airport",
            "is there a lot of traffic on the way to work",
            "when is my car due for service",
            "how do I change a flat tire",
            "call me a taxi",
            "what fuel does my car need",
        ],
    },
    "travel": {
        "description": "Trips abroad: flights, hotels, luggage, visas, currency, translation.",
        "examples": [
            "book me a flight to Madrid",
            "do I need a visa for Brazil",
            "is my flight delayed",
            "how do you say thank you in Italian",
            "the airline lost my suitcase",
            "find a hotel near the beach",
        ],
    },
    "utility": {
        "description": "Quick utilities: weather, time, date, alarms, timers, calculations, unit "
        "conversions, definitions, calls and texts.",
        "examples": [
            "will it be sunny tomorrow",
            "set an alarm for 7 am",
            "start a ten minute timer",
            "what's 12 times 9",
            "how many pounds is five kilos",
            "send a message to Anna",
        ],
    },
    "work": {
        "description": "The job: paid time off, payroll, benefits, taxes, retirement plans, meetings.",
        "examples": [
            "how many sick days do I have",
            "when do I get paid",
            "book a meeting with my manager",
            "what health insurance do I have through work",
            "where can I find my tax form",
            "request next friday off",
        ],
    },
    "small_talk": {
        "description": "Chit-chat with the assistant: greetings, thanks, jokes, questions about "
        "the assistant.",
        "examples": [
            "hey there",
            "thank you so much",
            "tell me something funny",
            "are you a person",
            "what should I call you",
            "see you later",
        ],
    },
    "meta": {
        "description": "Settings of the assistant itself: voice, volume, speed, language, name; yes, "
        "no, cancel, repeat.",
        "examples": [
            "talk slower please",
            "turn the volume down",
            "switch to spanish",
            "say that again",
            "yes please",
            "never mind",
        ],
    },
}

MT_SEEDS: dict[str, dict] = {
    "writing": {
        "description": "Write a text: an essay, blog post, email, letter, story or speech.",
        "examples": [
            "write a persuasive essay about recycling",
            "draft a thank-you email to a colleague",
            "compose a short story set in a lighthouse",
            "write a product announcement for a new phone",
        ],
    },
    "roleplay": {
        "description": "Role-play: pretend to be a character or person and answer in their voice.",
        "examples": [
            "pretend you are a medieval knight and greet me",
            "act as a travel agent and help me plan",
            "imagine you are a famous chef; describe your signature dish",
            "you are a detective, interrogate the suspect",
        ],
    },
    "reasoning": {
        "description": "Logic puzzles and reasoning: riddles, deductions, who sits where.",
        "examples": [
            "if all cats are animals and some animals are black, are some cats black",
            "three friends each have a different pet; who owns the dog",
            "a man is looking at a photo and says ... who is in the photo",
            "which of these statements must be true",
        ],
    },
    "math": {
        "description": "Math problems: arithmetic, algebra, geometry, probability, equations.",
        "examples": [
            "solve for x: 2x + 5 = 17",
            "what is the area of a circle with radius 3",
            "the probability of rolling two sixes",
            "find the sum of the first 100 integers",
        ],
    },
    "coding": {
        "description": "Programming: write or fix code, algorithms and data structures.",
        "examples": [
            "write a python function to merge two sorted lists",
            "implement a stack in C++",
            "find the bug in this javascript",
            "write a SQL query to count users per country",
        ],
    },
    "extraction": {
        "description": "Extract information from a given text: pull out names, dates, numbers, "
        "or return structured data like JSON.",
        "examples": [
            "from the paragraph below list every company name",
            "extract the dates and amounts from this invoice as JSON",
            "identify the people mentioned in the following article",
            "read these reviews and return the rating of each",
        ],
    },
    "stem": {
        "description": "Science and technology questions: physics, chemistry, biology, engineering.",
        "examples": [
            "explain how vaccines train the immune system",
            "why does ice float on water",
            "describe how a transistor works",
            "what happens during photosynthesis",
        ],
    },
    "humanities": {
        "description": "Humanities and social sciences: history, economics, philosophy, art, law, politics.",
        "examples": [
            "explain the causes of the French revolution",
            "how does inflation affect savings",
            "compare the ethics of Kant and Mill",
            "discuss the influence of impressionism on modern art",
        ],
    },
}


def confusion(truth: list[str], pred: list[str]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for t, p in zip(truth, pred, strict=True):
        out.setdefault(t, {}).setdefault(p, 0)
        out[t][p] += 1
    return {t: dict(sorted(row.items(), key=lambda kv: -kv[1])) for t, row in sorted(out.items())}


def accuracy(truth: list[str], pred: list[str]) -> float:
    return round(float(np.mean([t == p for t, p in zip(truth, pred, strict=True)])), 4)


def macro_recall(truth: list[str], pred: list[str]) -> float:
    per = {c: np.mean([p == c for t, p in zip(truth, pred, strict=True) if t == c]) for c in set(truth)}
    return round(float(np.mean(list(per.values()))), 4)


class Space:
    """One embedding space: seeds embedded by its embedder, data vectors from the disk cache."""

    def __init__(self, projection: str) -> None:
        self.embedder = shared_embedder(projection)
        self.encoder = self.embedder.encoder

    def vectors(self, texts: list[str], desc: str) -> np.ndarray:
        raw = encode_cached(self.encoder, texts, desc=desc)
        return self.embedder.projection.apply(raw)

    def classifier(self, seeds: dict, **kw) -> CategoryClassifier:
        return CategoryClassifier(self.embedder, seeds, **kw)


def share(pred: list[str], label: str) -> float:
    return round(float(np.mean([p == label for p in pred])), 4)


def per_query_us(clf: CategoryClassifier, one: np.ndarray) -> float:
    """Microseconds to classify one already-embedded query: best of 5 x 2,000 calls."""
    return round(min(timeit.repeat(lambda: clf.classify_vectors(one), number=2000, repeat=5)) / 2000 * 1e6, 1)


def description_only(seeds: dict) -> dict:
    return {c: [spec["description"]] for c, spec in seeds.items()}


def few_shot(
    space: Space,
    seeds: dict,
    method: dict,
    pool: dict[str, list[int]],
    pool_vectors: np.ndarray,
    eval_vectors: np.ndarray,
    eval_truth: list[str],
) -> dict:
    """Accuracy on eval with k extra labelled train examples per class, REPEATS fixed draws."""
    out = {}
    for k in SHOTS:
        accs = []
        for rep in range(REPEATS if k else 1):
            rng = random.Random(rep)
            clf = space.classifier(seeds, **method)
            if k:
                drawn = {c: rng.sample(pool[c], k) for c in clf.categories if pool.get(c)}
                clf.refine_vectors(
                    pool_vectors[[i for ids in drawn.values() for i in ids]],
                    [c for c, ids in drawn.items() for _ in ids],
                )
            accs.append(accuracy(eval_truth, clf.classify_vectors(eval_vectors)))
        out[f"k={k}"] = {"mean": round(float(np.mean(accs)), 4), "std": round(float(np.std(accs)), 4)}
    return out


def main() -> None:
    train, val = load_clinc("train"), load_clinc("val")
    mt = load_mt_bench()
    fresh = [x for x in load_freshqa() if x.group == "TEST"]

    train_text = [x.text for x in train]
    train_dom = [x.group for x in train]
    val_text = [x.text for x in val]
    val_intent = [x.label for x in val]
    val_dom = [x.group for x in val]
    mapped_val = [j for j, i in enumerate(val_intent) if i in CLINC_DEFAULT_CATEGORY]
    mapped_val_truth = [CLINC_DEFAULT_CATEGORY[val_intent[j]] for j in mapped_val]
    train_intent = [x.label for x in train]
    mt_text = [x.text for x in mt]
    mt_cat = [x.label for x in mt]
    fresh_text = [x.text for x in fresh]
    fresh_type = [x.label for x in fresh]

    results: dict = {
        "data": {
            "clinc_train": len(train_text),
            "clinc_val": len(val_text),
            "clinc_val_mapped": len(mapped_val),
            "mt_bench": len(mt_text),
            "freshqa_test": len(fresh_text),
        },
        "clinc_to_default": CLINC_DEFAULT_CATEGORY,
        "spaces": {},
    }
    for name, projection in SPACES.items():
        print(f"== {name}", file=sys.stderr)
        space = Space(projection)
        train_v = space.vectors(train_text, "CLINC train")
        val_v = space.vectors(val_text, "CLINC val")
        if projection == "none":
            val_v_raw = val_v
        mt_v = space.vectors(mt_text, "MT-bench")
        fresh_v = space.vectors(fresh_text, "FreshQA")
        r: dict = {}

        # Method choice on CLINC train only (10-domain task with CLINC_SEEDS).
        choice = {}
        for label, kw in CANDIDATES.items():
            pred = space.classifier(CLINC_SEEDS, **kw).classify_vectors(train_v)
            choice[label] = accuracy(train_dom, pred)
        r["method_selection_clinc_train"] = choice
        r["method"] = max(choice, key=lambda m: choice[m])
        method = CANDIDATES[r["method"]]

        # a. CLINC 10 domains on val.
        pred = space.classifier(CLINC_SEEDS, **method).classify_vectors(val_v)
        pred_desc = space.classifier(description_only(CLINC_SEEDS), **method).classify_vectors(val_v)
        r["clinc_domains_val"] = {
            "accuracy": accuracy(val_dom, pred),
            "macro_recall": macro_recall(val_dom, pred),
            "accuracy_description_only": accuracy(val_dom, pred_desc),
            "confusion": confusion(val_dom, pred),
        }
        # a2. CLINC mapped onto the default categories, DEFAULT_SEEDS.
        default = space.classifier(DEFAULT_SEEDS, **method)
        pred = default.classify_vectors(val_v[mapped_val])
        r["clinc_default_val"] = {
            "accuracy": accuracy(mapped_val_truth, pred),
            "macro_recall": macro_recall(mapped_val_truth, pred),
            "confusion": confusion(mapped_val_truth, pred),
        }

        # Cost per already-embedded query (DEFAULT_SEEDS), best of 5 x 2,000 calls.
        r["us_per_query"] = {
            "chosen": per_query_us(default, val_v[:1]),
            "prototype": per_query_us(space.classifier(DEFAULT_SEEDS, method="prototype"), val_v[:1]),
        }

        # b. MT-bench, first turns.
        pred = space.classifier(MT_SEEDS, **method).classify_vectors(mt_v)
        pred_desc = space.classifier(description_only(MT_SEEDS), **method).classify_vectors(mt_v)
        pred_def = default.classify_vectors(mt_v)
        is_code = [c == "coding" for c in mt_cat]
        said_code = [p == "code" for p in pred_def]
        tp = sum(a and b for a, b in zip(is_code, said_code, strict=True))
        r["mt_bench"] = {
            "accuracy": accuracy(mt_cat, pred),
            "accuracy_description_only": accuracy(mt_cat, pred_desc),
            "confusion": confusion(mt_cat, pred),
            "default_code": {
                "recall": round(tp / max(sum(is_code), 1), 4),
                "precision": round(tp / max(sum(said_code), 1), 4),
                "accuracy_code_vs_not": accuracy([str(x) for x in is_code], [str(x) for x in said_code]),
            },
            "default_confusion": confusion(mt_cat, pred_def),
        }

        # c. FreshQA TEST, DEFAULT_SEEDS.
        pred = default.classify_vectors(fresh_v)
        fast = [p for p, t in zip(pred, fresh_type, strict=True) if t == "fast-changing"]
        never = [p for p, t in zip(pred, fresh_type, strict=True) if t == "never-changing"]
        r["freshqa_test"] = {
            "fast_as_time_sensitive": share(fast, "time_sensitive"),
            "never_as_stable_fact": share(never, "stable_fact"),
            "accuracy_fast_vs_never": round(
                (share(fast, "time_sensitive") * len(fast) + share(never, "stable_fact") * len(never))
                / (len(fast) + len(never)),
                4,
            ),
            "time_sensitive_rate": {
                t: share([p for p, ft in zip(pred, fresh_type, strict=True) if ft == t], "time_sensitive")
                for t in ("never-changing", "slow-changing", "fast-changing")
            },
            "confusion": confusion(fresh_type, pred),
        }

        # d. Few-shot refinement from CLINC train, evaluated on val.
        pool_dom: dict[str, list[int]] = {}
        for j, d in enumerate(train_dom):
            pool_dom.setdefault(d, []).append(j)
        pool_def: dict[str, list[int]] = {}
        for j, i in enumerate(train_intent):
            if i in CLINC_DEFAULT_CATEGORY:
                pool_def.setdefault(CLINC_DEFAULT_CATEGORY[i], []).append(j)
        r["few_shot_clinc_domains_val"] = few_shot(
            space, CLINC_SEEDS, method, pool_dom, train_v, val_v, val_dom
        )
        # `code` has no CLINC examples: it keeps its seeds only (pool_def has no key for it).
        r["few_shot_clinc_default_val"] = few_shot(
            space,
            DEFAULT_SEEDS,
            method,
            {c: pool_def.get(c, []) for c in DEFAULT_SEEDS},
            train_v,
            val_v[mapped_val],
            mapped_val_truth,
        )
        results["spaces"][name] = r

    results["shipped"] = shipped(val_v_raw, mapped_val, mapped_val_truth, mt_cat, fresh_type)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=1) + "\n")
    print(report(results))
    print(json.dumps(results["shipped"], indent=1))


def shipped(val_raw, mapped_val, mapped_truth, mt_cat, fresh_type) -> dict:
    """The classifier exactly as the cache builds it (edgecache.categories, default Policy:
    raw 384-d space, knn-3, below min_category_score -> `other`), and how many QQP test
    questions (general questions: none should get a short-TTL category) it sends where."""
    from edgecache.categories import shared_classifier
    from edgecache.evaldata import load_qqp
    from edgecache.policy import Policy

    policy = Policy()
    space = Space("none")
    clf = shared_classifier(shared_embedder("learned-64"), policy)
    pred = clf.classify_vectors(val_raw[mapped_val])
    mt_pred = clf.classify_vectors(space.vectors([x.text for x in load_mt_bench()], "MT-bench"))
    fresh = [x for x in load_freshqa() if x.group == "TEST"]
    fresh_pred = clf.classify_vectors(space.vectors([x.text for x in fresh], "FreshQA"))
    qqp = sorted({q for p in load_qqp()["test"] for q in (p.a, p.b)})
    qqp_pred = clf.classify_vectors(space.vectors(qqp, "QQP test"))
    is_code = [c == "coding" for c in mt_cat]
    said = [p == "code" for p in mt_pred]
    tp = sum(a and b for a, b in zip(is_code, said, strict=True))
    return {
        "min_category_score": policy.min_category_score,
        "clinc_default_val": {
            "accuracy": accuracy(mapped_truth, pred),
            "macro_recall": macro_recall(mapped_truth, pred),
            "confusion": confusion(mapped_truth, pred),
        },
        "mt_bench_code": {
            "recall": round(tp / max(sum(is_code), 1), 4),
            "precision": round(tp / max(sum(said), 1), 4),
        },
        "freshqa_test_time_sensitive_rate": {
            t: share([p for p, ft in zip(fresh_pred, fresh_type, strict=True) if ft == t], "time_sensitive")
            for t in ("never-changing", "slow-changing", "fast-changing")
        },
        "qqp_test_categories": {c: share(qqp_pred, c) for c in policy.names},
        "qqp_test_questions": len(qqp),
    }


def report(results: dict) -> str:
    spaces = results["spaces"]

    def f3(v: float) -> str:
        return f"{v:.3f}"

    def method(r: dict) -> str:
        accs = " / ".join(f3(v) for v in r["method_selection_clinc_train"].values())
        return f"{r['method']} ({accs})"

    def code(r: dict) -> str:
        c = r["mt_bench"]["default_code"]
        return f"{c['recall']:.2f} / {c['precision']:.2f}"

    rows = [
        ("method chosen on CLINC train (train acc: prototype / nearest / knn-3 / knn-5)", method),
        ("CLINC val, 10 domains: accuracy", lambda r: f3(r["clinc_domains_val"]["accuracy"])),
        ("… descriptions only", lambda r: f3(r["clinc_domains_val"]["accuracy_description_only"])),
        ("CLINC val mapped → default categories: accuracy", lambda r: f3(r["clinc_default_val"]["accuracy"])),
        ("… macro recall", lambda r: f3(r["clinc_default_val"]["macro_recall"])),
        ("MT-bench 8 categories: accuracy", lambda r: f3(r["mt_bench"]["accuracy"])),
        ("… descriptions only", lambda r: f3(r["mt_bench"]["accuracy_description_only"])),
        ("MT-bench, default seeds: coding → code recall / precision", code),
        (
            "FreshQA test: fast-changing → time_sensitive",
            lambda r: f3(r["freshqa_test"]["fast_as_time_sensitive"]),
        ),
        (
            "FreshQA test: never-changing → stable_fact",
            lambda r: f3(r["freshqa_test"]["never_as_stable_fact"]),
        ),
        (
            "FreshQA test: time_sensitive rate never / slow / fast",
            lambda r: " / ".join(f"{v:.2f}" for v in r["freshqa_test"]["time_sensitive_rate"].values()),
        ),
        (
            "µs per embedded query, chosen / prototype (DEFAULT_SEEDS)",
            lambda r: f"{r['us_per_query']['chosen']} / {r['us_per_query']['prototype']}",
        ),
    ]
    for task, label in (
        ("few_shot_clinc_domains_val", "CLINC 10 domains"),
        ("few_shot_clinc_default_val", "CLINC mapped default"),
    ):
        for k in SHOTS:

            def shot(r: dict, task: str = task, k: int = k) -> str:
                m = r[task][f"k={k}"]
                return f"{m['mean']:.3f} ± {m['std']:.3f}"

            rows.append((f"few-shot {label}, k={k}", shot))
    lines = ["| measure | " + " | ".join(spaces) + " |", "|---|" + "---|" * len(spaces)]
    lines += [f"| {label} | " + " | ".join(get(r) for r in spaces.values()) + " |" for label, get in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
