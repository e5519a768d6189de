"""KV-cache compression harness: needle-in-a-haystack and shared-context tasks over real text.

Used by `benchmarks/kv_eval.py` (CPU, SmolLM2-135M) and `benchmarks/kv_gpu.py` (CUDA, any
Hugging Face causal LM). Two halves:

- Task builders (pure Python, no model): haystacks are sentences from `../shared/data`
  (FreshQA questions and answers, MT-bench prompts, CLINC150 queries), shuffled with a fixed
  seed and cut to a token budget; needles are made-up facts with a distinctive numeric
  answer ("The secret code of the amber falcon is 4721."), inserted at a sentence boundary
  nearest to the requested depth. The shared-context task (SCBench style) places several
  such facts in one context and asks for each of them against one compressed cache.
- Runner: kvpress's own `kv-press-text-generation` pipeline does the work (context prefilled
  and compressed by the press, then each question decoded greedily against that cache, with
  the question never part of what the press sees). Forward hooks on the decoder stack measure,
  without changing the pipeline: prefill(+compression) time, the time spent answering, and
  the bytes of the key/value tensors actually held in the cache (after compression and at
  peak while answering), summed over layers.
"""

from __future__ import annotations

import contextlib
import csv
import json
import random
import re
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CountTokens = Callable[[str], int]

# Fictional keys: none of them occurs in the haystack sources, so the question can only be
# answered from the needle.
NEEDLE_KEYS = (
    "the amber falcon",
    "the silver otter",
    "the crimson lantern",
    "the velvet compass",
    "the frozen orchard",
    "the copper heron",
    "the hollow violin",
    "the jade tortoise",
    "the scarlet glacier",
    "the quiet meteor",
    "the golden beetle",
    "the paper dragon",
    "the marble fox",
    "the indigo kettle",
    "the rusty anchor",
    "the woolen comet",
    "the brass pelican",
    "the ivory cactus",
    "the hidden lagoon",
    "the tin giraffe",
)
NEEDLE_TEMPLATE = "The secret code of {key} is {value}."
QUESTION_TEMPLATE = "What is the secret code of {key}? Answer with the number only."
# SmolLM2-135M, asked the bare question, mostly starts a list ("1. The ...") or drifts into
# the haystack (0 of 10 questions right at 1k tokens in a first probe); with its answer
# begun for it ("The secret code of X is") the full cache answers the number. The prefix
# names the key, so each question of a shared context gets its own.
ANSWER_PREFIX_TEMPLATE = "The secret code of {key} is"

# Sentences that could compete with a needle are left out of haystacks: long digit runs
# (a year would be a plausible wrong "code") and anything mentioning codes or secrets.
_DISTRACTOR = re.compile(r"\d{3,}|\bcode|\bsecret", re.IGNORECASE)
_MARKUP = re.compile(r"[`{}\[\]|<>#*_=\\]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class Needle:
    key: str
    value: str

    @property
    def statement(self) -> str:
        return NEEDLE_TEMPLATE.format(key=self.key, value=self.value)

    @property
    def question(self) -> str:
        return QUESTION_TEMPLATE.format(key=self.key)

    @property
    def answer_prefix(self) -> str:
        return ANSWER_PREFIX_TEMPLATE.format(key=self.key)


@dataclass(frozen=True)
class Sample:
    """One context and the questions asked against its (compressed) cache."""

    sample_id: str
    task: str  # "niah" or "shared"
    target_tokens: int
    context: str
    questions: tuple[str, ...]
    prefixes: tuple[str, ...]  # the start of each answer, decoded after it
    answers: tuple[str, ...]
    depths: tuple[float, ...]  # requested, in [0, 1], one per question
    positions: tuple[float, ...]  # achieved: haystack tokens before the needle / haystack tokens


@dataclass(frozen=True)
class Score:
    exact: bool
    contains: bool


# --------------------------------------------------------------------------- text sources


def _clean(sentence: str) -> str | None:
    s = " ".join(sentence.split())
    if not s or _MARKUP.search(s) or _DISTRACTOR.search(s):
        return None
    if not 5 <= len(s.split()) <= 45:
        return None
    s = s[0].upper() + s[1:]
    if s[-1] not in ".!?":
        s += "."
    return s


def split_sentences(text: str) -> list[str]:
    return [p for p in _SENTENCE_END.split(text.strip()) if p]


def load_sentences(root: Path) -> list[str]:
    """Haystack sentences from the shared evaluation data (deduplicated, in file order)."""
    cats = root / "categories"
    raw: list[str] = []
    with (cats / "freshqa.csv").open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            raw.append(row["question"])
            raw.extend(v for k, v in row.items() if k.startswith("answer_") and v)
    for line in (cats / "mt_bench_questions.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            for turn in json.loads(line)["turns"]:
                raw.extend(split_sentences(turn))
    clinc = json.loads((cats / "clinc150_data_full.json").read_text(encoding="utf-8"))
    raw.extend(text for text, _intent in clinc["train"])
    seen: set[str] = set()
    out: list[str] = []
    for r in raw:
        s = _clean(r)
        if s and s not in seen:
            seen.add(s)
            out.append(s)
    return out


# --------------------------------------------------------------------------- builders


def make_needles(n: int, rng: random.Random, digits: int = 4) -> list[Needle]:
    """`n` needles with distinct keys and distinct values of `digits` digits (no leading 0)."""
    if n > len(NEEDLE_KEYS):
        raise ValueError(f"at most {len(NEEDLE_KEYS)} needles per context")
    keys = rng.sample(NEEDLE_KEYS, n)
    lo, hi = 10 ** (digits - 1), 10**digits - 1
    values: set[int] = set()
    while len(values) < n:
        values.add(rng.randint(lo, hi))
    return [Needle(k, str(v)) for k, v in zip(keys, sorted(values, key=lambda _: rng.random()), strict=True)]


def build_haystack(
    sentences: Sequence[str], n_tokens: int, count: CountTokens, rng: random.Random
) -> list[str]:
    """Sentences drawn without replacement (in a seeded random order) until `n_tokens`."""
    order = list(range(len(sentences)))
    rng.shuffle(order)
    out: list[str] = []
    total = 0
    for i in order:
        cost = count(" " + sentences[i])
        if total + cost > n_tokens:
            if total > 0.9 * n_tokens:
                break
            continue
        out.append(sentences[i])
        total += cost
    if total < 0.9 * n_tokens:
        raise ValueError(f"not enough text for a {n_tokens}-token haystack (got {total})")
    return out


def insert_needles(
    haystack: Sequence[str], placed: Sequence[tuple[Needle, float]], count: CountTokens
) -> tuple[str, list[float]]:
    """Insert each needle at the sentence boundary nearest to its depth (fraction of the
    haystack's tokens that precede it); return the text and each needle's achieved depth."""
    costs = [count(" " + s) for s in haystack]
    bounds = [0]
    for c in costs:
        bounds.append(bounds[-1] + c)
    total = bounds[-1] or 1
    at: dict[int, list[Needle]] = {}
    achieved: list[float] = []
    for needle, depth in placed:
        if not 0.0 <= depth <= 1.0:
            raise ValueError(f"depth must be in [0, 1], got {depth}")
        target = depth * total
        idx = min(range(len(bounds)), key=lambda i: (abs(bounds[i] - target), i))
        at.setdefault(idx, []).append(needle)
        achieved.append(bounds[idx] / total)
    parts: list[str] = []
    for i, s in enumerate(haystack):
        parts.extend(n.statement for n in at.get(i, ()))
        parts.append(s)
    parts.extend(n.statement for n in at.get(len(haystack), ()))
    return " ".join(parts), achieved


def niah_samples(
    sentences: Sequence[str],
    lengths: Iterable[int],
    depths: Iterable[float],
    n_needles: int,
    count: CountTokens,
    seed: int = 0,
    digits: int = 4,
) -> list[Sample]:
    """One needle per context. For each length and repetition, one haystack is shared by all
    depths (as in the original NIAH grid) so depth is the only thing that varies."""
    depths = list(depths)
    out: list[Sample] = []
    for length in lengths:
        for rep in range(n_needles):
            rng = random.Random(f"niah:{seed}:{length}:{rep}")
            needle = make_needles(1, rng, digits)[0]
            budget = length - count(" " + needle.statement)
            hay = build_haystack(sentences, budget, count, rng)
            for d in depths:
                text, achieved = insert_needles(hay, [(needle, d)], count)
                out.append(
                    Sample(
                        sample_id=f"niah-s{seed}-{length}-r{rep}-d{round(d * 100)}",
                        task="niah",
                        target_tokens=length,
                        context=text,
                        questions=(needle.question,),
                        prefixes=(needle.answer_prefix,),
                        answers=(needle.value,),
                        depths=(d,),
                        positions=(achieved[0],),
                    )
                )
    return out


def shared_context_samples(
    sentences: Sequence[str],
    length: int,
    n_contexts: int,
    n_facts: int,
    count: CountTokens,
    seed: int = 0,
    digits: int = 4,
) -> list[Sample]:
    """SCBench-style: `n_facts` needles spread evenly through one context, then one question
    per fact (asked in a shuffled order) against the same compressed cache."""
    out: list[Sample] = []
    for c in range(n_contexts):
        rng = random.Random(f"shared:{seed}:{length}:{c}")
        needles = make_needles(n_facts, rng, digits)
        depths = [(i + 0.5) / n_facts for i in range(n_facts)]
        budget = length - sum(count(" " + n.statement) for n in needles)
        hay = build_haystack(sentences, budget, count, rng)
        text, achieved = insert_needles(hay, list(zip(needles, depths, strict=True)), count)
        order = list(range(n_facts))
        rng.shuffle(order)
        out.append(
            Sample(
                sample_id=f"shared-s{seed}-{length}-c{c}",
                task="shared",
                target_tokens=length,
                context=text,
                questions=tuple(needles[i].question for i in order),
                prefixes=tuple(needles[i].answer_prefix for i in order),
                answers=tuple(needles[i].value for i in order),
                depths=tuple(depths[i] for i in order),
                positions=tuple(achieved[i] for i in order),
            )
        )
    return out


# --------------------------------------------------------------------------- scoring


def score_answer(answer: str, expected: str) -> Score:
    """`exact`: the answer is the value (ignoring case, spaces and trailing punctuation);
    `contains`: the value appears as a whole number in it (so "14721" does not count for
    "4721"). Digits split by commas or spaces ("4,721", "4 721") are joined first."""
    norm = answer.strip().strip(".!?\"'").strip().lower()
    joined = re.sub(r"(?<=\d)[ ,](?=\d)", "", norm)
    exact = joined == expected.lower()
    contains = re.search(rf"(?<!\d){re.escape(expected)}(?!\d)", joined) is not None
    return Score(exact=exact, contains=contains)


# --------------------------------------------------------------------------- runner


def kv_size(model: Any, cache: Any) -> tuple[int, int]:
    """(bytes of the key/value tensors held, mean entries per layer and KV head that attention
    reads) of a transformers Cache, counted by edgecache's own measure (`kv_bytes`,
    `kv_entries`) as the worker does."""
    from edgecache.llm.presses import kv_bytes, kv_entries

    if not getattr(cache, "layers", None):
        return 0, 0
    return int(kv_bytes(model, cache)), round(float(kv_entries(model, cache).float().mean()))


@dataclass
class _Meter:
    """Hooks on the decoder stack (`model.model`): the pipeline calls it once to prefill the
    context (the press's hooks compress inside that call) and once per answer step after."""

    sync: Callable[[], None]
    model: Any = None
    calls: int = 0
    t_start: float = 0.0
    t_prefill_end: float = 0.0
    t_last_end: float = 0.0
    kv_after_prefill: int = 0
    kv_attended: int | None = None
    tokens_after_prefill: int = 0
    kv_peak: int = 0
    handles: list[Any] = field(default_factory=list)

    def attach(self, module: Any) -> None:
        self.handles.append(module.register_forward_pre_hook(self._pre, with_kwargs=True))
        self.handles.append(module.register_forward_hook(self._post, with_kwargs=True))

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def _pre(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        if self.calls == 0:
            self.sync()
            self.t_start = time.perf_counter()

    def _post(self, module: Any, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        self.sync()
        now = time.perf_counter()
        from edgecache.llm.presses import kv_bytes

        cache = kwargs.get("past_key_values") or getattr(output, "past_key_values", None)
        nbytes = int(kv_bytes(self.model, cache)) if cache is not None else 0
        self.kv_peak = max(self.kv_peak, nbytes)
        if self.calls == 0:
            self.t_prefill_end = now
            if cache is not None:
                self.kv_after_prefill, self.tokens_after_prefill = kv_size(self.model, cache)
                self.kv_attended = int(kv_bytes(self.model, cache, attended=True))
        self.t_last_end = now
        self.calls += 1


def make_pipeline(model: Any, tokenizer: Any) -> Any:
    import kvpress  # noqa: F401  (registers the "kv-press-text-generation" pipeline)
    from transformers import pipeline

    return pipeline("kv-press-text-generation", model=model, tokenizer=tokenizer, device=model.device)


def run_sample(
    pipe: Any, sample: Sample, press: Any, max_new_tokens: int, query_aware: bool = False
) -> dict[str, Any]:
    """Run one sample through the kvpress pipeline with `press` (None = full cache).

    The pipeline's own steps are called in order (`preprocess`, `_forward`) rather than
    `pipe(...)`, for one reason: kvpress takes a single `answer_prefix` for all questions,
    and each question of a shared context needs its own (see ANSWER_PREFIX_TEMPLATE), so
    each prefix's tokens are appended to its question's tokens in between. Prefill,
    compression and greedy decoding are kvpress's code, untouched.

    `query_aware` (single-question samples only): the question is prefilled, and so
    compressed, with the context, as in the SnapKV / WindowKV / CompressKV papers'
    LongBench runs where the observation window holds the question. The token sequence is
    the same as without it (kvpress puts the question right after the context); only the
    point where compression happens moves past the question.
    """
    import torch

    tokenizer = pipe.tokenizer
    device = pipe.model.device
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    applied = query_aware and len(sample.questions) == 1
    inputs = pipe.preprocess(
        sample.context + sample.questions[0] if applied else sample.context,
        questions=[""] if applied else list(sample.questions),
        answer_prefix="",
        max_context_length=10**9,
    )
    inputs["questions_ids"] = [
        torch.cat([q, tokenizer.encode(p, return_tensors="pt", add_special_tokens=False)], dim=1)
        for q, p in zip(inputs["questions_ids"], sample.prefixes, strict=True)
    ]
    meter = _Meter(sync=sync, model=pipe.model)
    meter.attach(pipe.model.model)
    # A press that offloads (SentenceKV's) lets each question retrieve from what it evicted.
    retrieving = press.retrieving(pipe.model) if hasattr(press, "retrieving") else contextlib.nullcontext()
    try:
        with torch.inference_mode(), retrieving:
            answers = [str(a) for a in pipe._forward(inputs, max_new_tokens=max_new_tokens, press=press)]
    finally:
        meter.detach()
    store = getattr(press, "store", None)
    scores = [score_answer(a, e) for a, e in zip(answers, sample.answers, strict=True)]
    return {
        "sample_id": sample.sample_id,
        "task": sample.task,
        "query_aware": applied,
        "target_tokens": sample.target_tokens,
        "context_tokens": int(inputs["context_ids"].shape[1]),
        "depths": list(sample.depths),
        "answers": answers,
        "expected": list(sample.answers),
        "exact": [sc.exact for sc in scores],
        "contains": [sc.contains for sc in scores],
        "prefill_s": meter.t_prefill_end - meter.t_start,
        "decode_s": meter.t_last_end - meter.t_prefill_end,
        "decode_steps": meter.calls - 1,
        "kv_bytes_after_prefill": meter.kv_after_prefill,
        "kv_bytes_attended": meter.kv_attended,
        "kv_tokens_after_prefill": meter.tokens_after_prefill,
        "kv_bytes_peak": meter.kv_peak,
        "kv_bytes_offloaded": store.nbytes if store is not None else 0,
    }


@dataclass(frozen=True)
class PressSpec:
    name: str
    budget: float  # fraction of the context's KV entries kept; 1.0 for the full cache

    @property
    def label(self) -> str:
        return self.name if self.name == "full" else f"{self.name}@{self.budget:g}"


def press_grid(names: Sequence[str], budgets: Sequence[float]) -> list[PressSpec]:
    specs = [PressSpec("full", 1.0)] if "full" in names else []
    specs += [PressSpec(n, b) for b in budgets for n in names if n != "full"]
    return specs


def run_grid(
    pipe: Any,
    samples: Sequence[Sample],
    specs: Sequence[PressSpec],
    make_press: Callable[[str, float], Any],
    max_new_tokens: int,
    progress: bool = True,
    after_press: Callable[[list[dict[str, Any]]], None] | None = None,
    query_aware: bool = False,
) -> list[dict[str, Any]]:
    """Every sample under every press. A press that fails is recorded (with its error) in
    place of its samples, so one broken method does not lose the others' numbers;
    `after_press(records)` runs after each press (the scripts save partial results there)."""
    from tqdm.auto import tqdm

    records: list[dict[str, Any]] = []
    bar = tqdm(total=len(specs) * len(samples), disable=not progress, desc="kv-eval", unit="ctx")
    # Presses that keep different numbers of entries per layer need the attention patch that
    # importing edgecache.llm.presses installs (presses/masks.py) to decode multi-token questions.
    import edgecache.llm.presses  # noqa: F401

    for spec in specs:
        done: list[dict[str, Any]] = []
        try:
            press = None if spec.name == "full" else make_press(spec.name, spec.budget)
            for sample in samples:
                bar.set_postfix_str(f"{spec.label} {sample.sample_id}", refresh=False)
                rec = run_sample(pipe, sample, press, max_new_tokens, query_aware)
                done.append({"press": spec.name, "budget": spec.budget, **rec})
                bar.update(1)
        except Exception as exc:  # reported per press; the grid goes on
            bar.update(len(samples) - len(done))
            done = [{"press": spec.name, "budget": spec.budget, "error": f"{type(exc).__name__}: {exc}"}]
            bar.write(f"{spec.label} failed: {done[0]['error']}")
        records.extend(done)
        if after_press:
            after_press(records)
    bar.close()
    return records


# --------------------------------------------------------------------------- summary


def _mean(xs: Iterable[float]) -> float | None:
    xs = list(xs)
    return statistics.fmean(xs) if xs else None


def summarize(records: Sequence[dict[str, Any]], reference: str = "snapkv") -> list[dict[str, Any]]:
    """Per (press, budget, task): accuracy ("contains" match), exact-match rate, KV bytes
    and times; ratios against the full cache and against `reference` at the same budget."""
    ok = [r for r in records if "error" not in r]
    groups: dict[tuple[str, float, str], list[dict[str, Any]]] = {}
    for r in ok:
        for task in (r["task"], "all"):
            groups.setdefault((r["press"], r["budget"], task), []).append(r)
    rows: dict[tuple[str, float, str], dict[str, Any]] = {}
    for (press, budget, task), rs in groups.items():
        hits = [c for r in rs for c in r["contains"]]
        exact = [c for r in rs for c in r["exact"]]
        steps = sum(r["decode_steps"] for r in rs)
        rows[(press, budget, task)] = {
            "press": press,
            "budget": budget,
            "task": task,
            "n_questions": len(hits),
            "n_contexts": len(rs),
            "accuracy": sum(hits) / len(hits),
            "exact_match": sum(exact) / len(exact),
            "kv_bytes_after_prefill": _mean(r["kv_bytes_after_prefill"] for r in rs),
            "kv_bytes_attended": _mean(
                r["kv_bytes_attended"] for r in rs if r.get("kv_bytes_attended") is not None
            ),
            "kv_bytes_peak": max(r["kv_bytes_peak"] for r in rs),
            "kv_bytes_peak_mean": _mean(r["kv_bytes_peak"] for r in rs),
            # Held off the device by a press that offloads (SentenceKV's), not attended.
            "kv_bytes_offloaded": _mean(r.get("kv_bytes_offloaded", 0) for r in rs),
            "kv_tokens_after_prefill": _mean(r["kv_tokens_after_prefill"] for r in rs),
            "context_tokens": _mean(r["context_tokens"] for r in rs),
            "prefill_s": _mean(r["prefill_s"] for r in rs),
            "decode_s": _mean(r["decode_s"] for r in rs),
            "decode_ms_per_step": 1000 * sum(r["decode_s"] for r in rs) / steps if steps else None,
        }
    for (press, budget, task), row in rows.items():
        full = rows.get(("full", 1.0, task))
        ref = rows.get((reference, budget, task))
        row["accuracy_vs_full"] = _ratio(row["accuracy"], full and full["accuracy"])
        row["kv_bytes_vs_full"] = _ratio(
            row["kv_bytes_after_prefill"], full and full["kv_bytes_after_prefill"]
        )
        row["kv_attended_vs_full"] = _ratio(row["kv_bytes_attended"], full and full["kv_bytes_attended"])
        # A press that retrieves while answering holds more then than after prefill.
        row["kv_peak_vs_full"] = _ratio(row["kv_bytes_peak_mean"], full and full["kv_bytes_peak_mean"])
        row["prefill_vs_full"] = _ratio(row["prefill_s"], full and full["prefill_s"])
        row["accuracy_vs_" + reference] = (
            None if press in ("full", reference) else _ratio(row["accuracy"], ref and ref["accuracy"])
        )
        row["accuracy_minus_" + reference] = (
            None if press in ("full", reference) or ref is None else row["accuracy"] - ref["accuracy"]
        )
    return sorted(rows.values(), key=lambda r: (r["task"], -r["budget"], r["press"]))


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def plot_accuracy(summary: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """Accuracy vs budget, one line per press, one panel per task; full cache as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in ("niah", "shared", "all") if any(r["task"] == t for r in summary)]
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks) + 1.5, 4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        rows = [r for r in summary if r["task"] == task]
        full = next((r for r in rows if r["press"] == "full"), None)
        for name in sorted({r["press"] for r in rows} - {"full"}):
            pts = sorted((r["budget"], r["accuracy"]) for r in rows if r["press"] == name)
            ax.plot([b for b, _ in pts], [a for _, a in pts], marker="o", label=name)
        if full:
            ax.axhline(full["accuracy"], color="black", linestyle="--", label="full cache")
        budgets = sorted({r["budget"] for r in rows if r["press"] != "full"})
        ax.set_xticks(budgets, [f"{b:.0%}" for b in budgets])
        ax.set_xlim(0, max([*budgets, 0.5]) + 0.05)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("KV budget (fraction kept)")
        ax.set_ylabel("accuracy")
        ax.set_title(task)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sample_summary(samples: Sequence[Sample]) -> list[dict[str, Any]]:
    """What was built (without the context text): ids, depths requested vs achieved."""
    return [
        {k: v for k, v in asdict(s).items() if k not in ("context", "questions")}
        | {"context_chars": len(s.context)}
        for s in samples
    ]
