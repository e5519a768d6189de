"""Zero-shot query categories (code, small talk, stable fact, time-sensitive, personal, other).

Why: a cache should not treat every query alike. "What's the weather today?" must expire
within hours, "Who wrote Hamlet?" can live for months, and "What's my balance?" is about
one user's own account. A category per query lets policy pick TTLs and sharing rules.

How: each category is a handful of seed texts (a one-line description and short example
queries). The seeds are embedded once with the same embedder the cache uses; a query is
then classified from the vector the cache has already computed, with one small matrix
product (query (d,) x seeds (d, ~90)) and a top-3 per category — no extra encoder run, no
model; ~40 us per query (prototype mode: ~14 us).

Measured (``benchmarks/categories.py``, numbers in ``benchmarks/README.md``):
- method: k-NN (k=3, the mean of a category's 3 most similar seeds) beat prototypes,
  nearest seed and k=5 in every space on CLINC150 ``train`` (learned-64: 0.531 vs 0.515
  prototype); it was chosen there, never on the reported splits.
- space: the cache's learned 64-d head was trained to tell paraphrases apart, and it
  discards topic: CLINC 10-domain accuracy 0.51 there vs 0.71 on the raw 384-d encoder
  vectors (0.63 with PCA-64). The class works with any embedder; give it raw encoder
  vectors (projection "none") where accuracy matters more than reusing the cache vector.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np

from .embedder import Embedder
from .errors import ConfigError, InvalidInputError
from .vectorindex import all_finite

Method = Literal["prototype", "nearest", "knn"]
METHODS: tuple[str, ...] = ("prototype", "nearest", "knn")
FALLBACK = "other"

# The examples below were written for this module by hand as generic, everyday queries,
# not drawn from the evaluation data in ../shared/data (CLINC150, MT-bench, FreshQA), which
# measures this classifier. Being generic, a few equal rows there word for word ("tell me a
# joke", "are you a robot": 10 CLINC train queries and one val query); benchmarks/README.md
# lists them. Few-shot refinement with real labelled queries goes through `refine`.
DEFAULT_SEEDS: dict[str, dict[str, Any]] = {
    "code": {
        "description": "Programming: writing, explaining, fixing or reviewing source code and software.",
        "examples": [
            "write a python function that sorts a dictionary by value",
            "why does my javascript code throw undefined is not a function",
            "how do I join two tables in SQL",
            "fix this segmentation fault in my C program",
            "explain what a closure is in programming",
            "convert this bash loop to a python script",
            "how do I make an HTTP request in Go",
            "regex to match an email address",
            "what does git rebase do",
            "write unit tests for this class",
            "how to read a CSV file with pandas",
            "implement binary search in Java",
            "my docker container exits immediately, how do I debug it",
            "refactor this function to be faster",
            "what is the time complexity of quicksort",
        ],
    },
    "small_talk": {
        "description": "Casual conversation with the assistant: greetings, thanks, jokes, feelings, "
        "questions about the assistant itself.",
        "examples": [
            "hello there",
            "hi, how are you doing",
            "good morning!",
            "thanks a lot, that helped",
            "goodbye, talk to you later",
            "tell me a joke",
            "what's your name",
            "are you a robot",
            "who created you",
            "do you have feelings",
            "what do you like to do for fun",
            "I'm bored, let's chat",
            "you're funny",
            "how old are you",
            "nice to meet you",
        ],
    },
    "stable_fact": {
        "description": "Facts that do not change over time: history, science, geography, definitions, "
        "math and how things work.",
        "examples": [
            "who wrote Romeo and Juliet",
            "what is the boiling point of water in fahrenheit",
            "when did the second world war end",
            "what is the capital of Australia",
            "define photosynthesis",
            "what does the word ubiquitous mean",
            "how many sides does a hexagon have",
            "what is 15 percent of 80",
            "how far is the moon from the earth",
            "who painted the Mona Lisa",
            "what is the chemical symbol for gold",
            "how many centimeters are in an inch",
            "why is the sky blue",
            "what is the square root of 144",
            "which planet is the largest in the solar system",
        ],
    },
    "time_sensitive": {
        "description": "Questions whose answer changes over time: weather, prices, news, sports scores, "
        "current office holders, the latest or today's anything.",
        "examples": [
            "what's the weather going to be like tomorrow",
            "will it rain this weekend",
            "what is the stock price of Apple right now",
            "latest news headlines today",
            "who won the game last night",
            "current score of the football match",
            "who is the current prime minister",
            "what is the newest iPhone model",
            "how much is bitcoin worth today",
            "what time is it in Tokyo",
            "what's today's date",
            "is the highway congested right now",
            "how much does gas cost this week",
            "who is leading the election polls",
            "what movies are in theaters now",
        ],
    },
    "personal": {
        "description": "The user's own data and accounts: bank balance, transactions, cards, orders, "
        "bookings, reminders, calendar, to-do lists, bills.",
        "examples": [
            "what is my account balance",
            "show my recent transactions",
            "when is my credit card bill due",
            "where is my package",
            "cancel my hotel reservation",
            "remind me to call mom at 6",
            "what's on my calendar tomorrow",
            "add milk to my shopping list",
            "did my paycheck arrive",
            "block my debit card, I lost it",
            "how many vacation days do I have left",
            "change my account password",
            "what meetings do I have this afternoon",
            "transfer 200 dollars to my savings",
            "check the status of my order",
        ],
    },
    "other": {
        "description": "Anything else: creative writing, advice, recommendations, opinions, planning, "
        "summaries and translations.",
        "examples": [
            "write a poem about autumn",
            "give me ideas for a birthday party",
            "suggest a good book to read",
            "help me write a cover letter",
            "summarize this article for me",
            "translate this sentence into French",
            "what should I cook for dinner",
            "plan a three day trip to Rome",
            "how can I be more productive",
            "write a short story about a dragon",
            "recommend a restaurant for a date",
            "give me tips for a job interview",
            "what's a good name for my dog",
            "pretend you are a pirate",
        ],
    },
}


def seed_texts(seeds: Mapping[str, Any]) -> dict[str, list[str]]:
    """{category: texts} from either plain lists or {"description", "examples"} specs.

    Both shapes are accepted so a caller can pass `DEFAULT_SEEDS` as it is or a quick
    {"category": ["text", ...]} mapping; the description is simply one more seed text.
    """
    if not isinstance(seeds, Mapping) or not seeds:
        raise ConfigError("seeds must be a non-empty mapping {category: texts}")
    out: dict[str, list[str]] = {}
    for category, spec in seeds.items():
        if not isinstance(category, str) or not category.strip():
            raise ConfigError(f"category names must be non-empty strings, got {category!r}")
        if isinstance(spec, Mapping):
            unknown = set(spec) - {"description", "examples"}
            if unknown:
                raise ConfigError(f"seed spec of {category!r} has unknown keys {sorted(unknown)}")
            texts = ([spec["description"]] if spec.get("description") else []) + list(
                spec.get("examples", [])
            )
        elif isinstance(spec, str):
            texts = [spec]
        elif isinstance(spec, Sequence):
            texts = list(spec)
        else:
            raise ConfigError(f"seeds of {category!r} must be texts or a spec, got {type(spec).__name__}")
        if not texts:
            raise ConfigError(f"category {category!r} has no seed texts")
        for t in texts:
            if not isinstance(t, str) or not t.strip():
                raise ConfigError(f"seed texts of {category!r} must be non-empty strings, got {t!r}")
        out[category] = texts
    return out


def _unit_rows(vectors: object, dim: int, what: str) -> np.ndarray:
    """(n, dim) float32 from a (dim,) or (n, dim) array; bad shapes and NaNs are refused."""
    try:
        x = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{what} must be a numeric array: {exc}") from exc
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] != dim:
        raise InvalidInputError(f"{what} must have shape (n, {dim}), got {tuple(np.shape(vectors))}")
    if not all_finite(x):
        raise InvalidInputError(f"{what} contain NaN or infinite values")
    return x


class _Matrices(NamedTuple):
    prototypes_t: np.ndarray  # (d, C) unit prototypes
    seeds_t: np.ndarray  # (d, n_seeds + 1): every seed, then a zero column
    pad: np.ndarray  # (n_seeds + 1,): 0, and -inf for the zero column
    gather: np.ndarray  # (C, m) columns of each category's seeds, the zero column past its count
    mean_of_top: np.ndarray  # (C,) 1 / min(count, k)
    some_below_k: bool


class CategoryClassifier:
    """Assigns each query vector one category by cosine to per-category seed embeddings.

    method:
      - "knn" (default): a category scores the mean cosine of its `k` most similar seeds
        (all of them when it has fewer). One (n, d) x (d, n_seeds) product, then a top-k.
        Best on CLINC150 train in every space measured (see the module docstring).
      - "prototype": cosine to the normalised mean of the category's seed vectors; one
        (n, d) x (d, C) product, the cheapest, ~1-2 points less accurate.
      - "nearest": the single most similar seed (k-NN with k=1), sensitive to one odd seed.
    min_score: when the best score is below it, `fallback` is returned instead (None: never).
    fallback: the label for low-confidence queries; it need not be one of the categories.
    """

    def __init__(
        self,
        embedder: Embedder,
        seeds: Mapping[str, Any] = DEFAULT_SEEDS,
        *,
        method: Method = "knn",
        k: int = 3,
        min_score: float | None = None,
        fallback: str = FALLBACK,
    ) -> None:
        if method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"k must be a positive integer, got {k!r}")
        if min_score is not None and (
            isinstance(min_score, bool)
            or not isinstance(min_score, int | float)
            or not math.isfinite(min_score)
            or not -1.0 <= min_score <= 1.0
        ):
            raise ConfigError(f"min_score must be None or a cosine in [-1, 1], got {min_score!r}")
        if not isinstance(fallback, str) or not fallback.strip():
            raise ConfigError(f"fallback must be a non-empty string, got {fallback!r}")
        texts = seed_texts(seeds)
        self.embedder = embedder
        self.method: Method = method
        self.k = k
        self.min_score = None if min_score is None else float(min_score)
        self.fallback = fallback
        self.categories: tuple[str, ...] = tuple(texts)
        self.dim = int(embedder.dim)
        self._index = {c: i for i, c in enumerate(self.categories)}
        self._lock = threading.Lock()
        flat = [t for c in self.categories for t in texts[c]]
        vectors = _unit_rows(embedder.embed(flat).vectors, self.dim, "seed vectors")
        self._seeds: list[np.ndarray] = []
        start = 0
        for c in self.categories:
            self._seeds.append(vectors[start : start + len(texts[c])])
            start += len(texts[c])
        self._rebuild()

    # -- building -------------------------------------------------------------------------

    def _rebuild(self) -> None:
        """Recompute the lookup matrices; swapped in one assignment so readers never see a mix."""
        seeds = [s.astype(np.float32) for s in self._seeds]
        means = np.stack([s.mean(axis=0) for s in seeds])
        norms = np.linalg.norm(means, axis=1, keepdims=True)
        prototypes = (means / np.maximum(norms, 1e-12)).astype(np.float32)
        all_seeds = np.concatenate(seeds)
        # For nearest/knn: column j*m + r of the gathered similarities is seed r of category j;
        # categories with fewer than m seeds point at an extra column: a zero seed whose
        # similarity the added -inf turns into a value no top-k prefers.
        counts = np.array([len(s) for s in seeds])
        m = int(counts.max())
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        gather = np.full((len(seeds), m), len(all_seeds))
        for j, (start, count) in enumerate(zip(starts, counts, strict=True)):
            gather[j, :count] = np.arange(start, start + count)
        padded_seeds = np.concatenate([all_seeds, np.zeros((1, self.dim), np.float32)])
        pad = np.zeros(len(padded_seeds), np.float32)
        pad[-1] = -np.inf
        # (d, C) and (d, n_seeds + 1), transposed once here so lookups are a plain x @ M.
        self._state = _Matrices(
            prototypes_t=np.ascontiguousarray(prototypes.T),
            seeds_t=np.ascontiguousarray(padded_seeds.T),
            pad=pad,
            gather=gather,
            mean_of_top=(1.0 / np.minimum(counts, self.k)).astype(np.float32),
            some_below_k=bool((counts < self.k).any()),
        )

    @property
    def prototypes(self) -> np.ndarray:
        """(n_categories, dim) unit rows, in the order of `categories`."""
        return self._state.prototypes_t.T.copy()

    def seed_counts(self) -> dict[str, int]:
        return {c: len(s) for c, s in zip(self.categories, self._seeds, strict=True)}

    def refine(self, texts: Sequence[str], labels: Sequence[str]) -> None:
        """Add labelled example queries (few-shot): they join their category's seeds.

        A deployment can label a few real queries per category from its own traffic; real
        phrasing moves the prototypes toward where queries actually land.
        """
        if isinstance(texts, str) or isinstance(labels, str):
            raise InvalidInputError("texts and labels must be lists, not a single string")
        texts, labels = list(texts), list(labels)
        self._check_labels(labels, len(texts))
        for t in texts:
            if not isinstance(t, str) or not t.strip():
                raise InvalidInputError(f"refine texts must be non-empty strings, got {t!r}")
        if texts:
            self.refine_vectors(self.embedder.embed(texts).vectors, labels)

    def refine_vectors(self, vectors: np.ndarray, labels: Sequence[str]) -> None:
        """`refine` for texts the caller has already embedded with this classifier's embedder."""
        labels = list(labels)
        if not labels and np.size(vectors) == 0:
            return
        x = _unit_rows(vectors, self.dim, "refine vectors")
        self._check_labels(labels, len(x))
        with self._lock:
            for label in dict.fromkeys(labels):
                rows = x[[i for i, lab in enumerate(labels) if lab == label]]
                j = self._index[label]
                self._seeds[j] = np.concatenate([self._seeds[j], rows])
            self._rebuild()

    def _check_labels(self, labels: list[str], n: int) -> None:
        if len(labels) != n:
            raise InvalidInputError(f"got {n} examples but {len(labels)} labels")
        unknown = sorted({str(lab) for lab in labels if lab not in self._index})
        if unknown:
            raise InvalidInputError(
                f"unknown categories {unknown}; this classifier knows {', '.join(self.categories)}"
            )

    # -- lookup ---------------------------------------------------------------------------

    def scores(self, vectors: np.ndarray) -> np.ndarray:
        """(n, n_categories) cosine scores of query vectors (embedded by the same embedder)."""
        x = _unit_rows(vectors, self.dim, "query vectors")
        state = self._state
        if self.method == "prototype":
            return x @ state.prototypes_t
        # Few numpy calls: a lookup classifies right after the encoder, when each costs 5-10 us.
        sims = (x @ state.seeds_t + state.pad)[:, state.gather]  # (n, C, m)
        if self.method == "nearest":
            return sims.max(axis=2)
        top = np.sort(sims, axis=2)[:, :, -self.k :]  # ascending: the best k last
        if state.some_below_k:
            top = np.where(np.isfinite(top), top, np.float32(0.0))  # the -inf padding
        return top.sum(axis=2) * state.mean_of_top

    def classify_vectors(self, vectors: np.ndarray) -> list[str]:
        """One category per row; `fallback` where the best score is below `min_score`."""
        s = self.scores(vectors)
        best = s.argmax(axis=1)
        labels = [self.categories[i] for i in best]
        if self.min_score is not None:
            top = s[np.arange(len(s)), best]
            labels = [
                self.fallback if v < self.min_score else lab for v, lab in zip(top, labels, strict=True)
            ]
        return labels

    def classify(self, texts: Sequence[str]) -> list[str]:
        """Embeds and classifies; in the cache prefer `classify_vectors` with the query vector."""
        if isinstance(texts, str):
            raise InvalidInputError("classify takes a list of texts, not a single string")
        texts = list(texts)
        for t in texts:
            if not isinstance(t, str) or not t.strip():
                raise InvalidInputError(f"texts must be non-empty strings, got {t!r}")
        if not texts:
            return []
        return self.classify_vectors(self.embedder.embed(texts).vectors)
