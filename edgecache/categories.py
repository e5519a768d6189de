"""What each category's policy means at this moment: its category, thresholds and expiry.

The policy (edgecache.policy) says what is allowed; feedback (an error-bounded
threshold per category) and backend load move the thresholds and TTLs within it. This
module is the one place that combines them, so the cache, the service and the replay
benchmark all apply the same rules.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .classifier import DEFAULT_SEEDS, CategoryClassifier, seed_texts
from .config import CacheConfig
from .decision import Thresholds, strictest
from .embcache import encode_cached
from .embedder import Embedded, Embedder
from .errors import ConfigError, InvalidInputError
from .load import LoadSignal
from .policy import Policy
from .results import Entry

if TYPE_CHECKING:
    from .calibration import OnlineCalibrator


def category_seeds(policy: Policy) -> dict[str, Any]:
    """Seeds of each category: its own, else the built-in ones of a default category name.
    The fallback may have none: it is what the classifier returns when nothing fits."""
    out: dict[str, Any] = {}
    for cat in policy.categories:
        if cat.seeds:
            out[cat.name] = list(cat.seeds)
        elif cat.name in DEFAULT_SEEDS:
            out[cat.name] = DEFAULT_SEEDS[cat.name]
        elif cat.name != policy.fallback:
            raise ConfigError(
                f"category {cat.name!r} needs seeds (a description and example queries) "
                "for the zero-shot classifier, or set policy.classify = false"
            )
    return out


class TopicSpace:
    """The embedder as the classifier sees it: its pre-projection vectors when it has them.

    Seed texts of the shipped encoder are read from (and saved to) the embeddings folder of
    EDGECACHE_HOME: encoding ~90 seeds costs ~0.8 s of a cold start, a file read ~1 ms. The
    Lambda layer ships that file."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self.encoder = getattr(embedder, "encoder", None)
        if self.encoder is not None:
            self.uses_raw, self.dim = True, int(self.encoder.dim)
        else:
            probe = embedder.embed(["what is this about"])
            self.uses_raw = probe.raw is not None
            self.dim = probe.raw.shape[1] if probe.raw is not None else embedder.dim
        self.fingerprint = embedder.fingerprint + (":raw" if self.uses_raw else "")

    def embed(self, texts: list[str]) -> Embedded:
        if self.encoder is not None:
            return Embedded(encode_cached(self.encoder, texts, progress=False), [False] * len(texts))
        out = self.embedder.embed(texts)
        return Embedded(out.raw if out.raw is not None else out.vectors, out.truncated)


_classifiers: dict[tuple[str, str], CategoryClassifier] = {}
_classifiers_lock = threading.Lock()


def shared_classifier(embedder: Embedder, policy: Policy) -> CategoryClassifier:
    """One classifier per encoder and category set: every user's cache shares it."""
    seeds = category_seeds(policy)
    digest = hashlib.sha256(
        repr((sorted(seed_texts(seeds).items()), policy.fallback, policy.min_category_score)).encode()
    ).hexdigest()
    key = (embedder.fingerprint, digest)
    with _classifiers_lock:
        if key not in _classifiers:
            _classifiers[key] = CategoryClassifier(
                TopicSpace(embedder), seeds, fallback=policy.fallback, min_score=policy.min_category_score
            )
        return _classifiers[key]


class CategoryRules:
    def __init__(
        self,
        config: CacheConfig,
        embedder: Embedder,
        load: LoadSignal | None = None,
        calibrator: OnlineCalibrator | None = None,
    ) -> None:
        self.config = config
        self.policy = config.policy
        self._by_name = {c.name: c for c in self.policy.categories}
        self.classifier = (
            shared_classifier(embedder, self.policy)
            if self.policy.classify and len(self.policy.categories) > 1
            else None
        )
        self.load = load
        if calibrator is None and self.policy.false_hit_target is not None:
            from .calibration import OnlineCalibrator

            calibrator = OnlineCalibrator(**self.policy.calibration_settings())
        self.calibrator = calibrator
        # No pair of categories accepts a context less alike than this (load never relaxes it).
        self.loosest_context = min(
            c.context_threshold if c.context_threshold is not None else config.context_threshold
            for c in self.policy.categories
        )

    def check(self, name: object) -> str:
        if not isinstance(name, str) or name not in self._by_name:
            raise InvalidInputError(f"unknown category {name!r}; known: {sorted(self._by_name)}")
        return name

    def categorize(self, vectors: np.ndarray, explicit: Sequence[object | None]) -> list[str]:
        """Each query's category: the caller's when given, else the classifier's.

        `vectors`: the queries' topic vectors (Embedded.raw when the embedder has them).
        """
        out = [None if e is None else self.check(e) for e in explicit]
        todo = [i for i, name in enumerate(out) if name is None]
        if todo:
            guessed = (
                self.classifier.classify_vectors(vectors[todo])
                if self.classifier is not None
                else [self.policy.fallback] * len(todo)
            )
            for i, name in zip(todo, guessed, strict=True):
                out[i] = name
        return [str(name) for name in out]

    def ttl(self, category: str, explicit: float | None) -> float | None:
        """The caller's TTL if given; else the shorter of the category's and the cache-wide
        one, so a cache-wide TTL caps every entry and volatile categories expire sooner."""
        if explicit is not None:
            return explicit
        limits = [t for t in (self._by_name[category].ttl_seconds, self.config.ttl_seconds) if t is not None]
        return min(limits) if limits else None

    def count_lookup(self, category: str, threshold: float) -> None:
        """Every standalone lookup counts toward its category's false-hit rate per request.

        Follow-ups are left out: their context check gates them and their threshold stays fixed.
        """
        if self.calibrator is not None:
            self.calibrator.count_lookups(category, served_at=threshold)

    def max_ttl_factor(self, category: str) -> float:
        return self._by_name[category].max_ttl_factor

    def observe(self, entry: Entry, correct: bool) -> None:
        """Feedback on the last standalone hit of an entry moves the threshold of the
        category it was served under (when a false-hit target is set)."""
        if self.calibrator is not None and entry.last_similarity is not None and entry.last_category:
            self.calibrator.observe(
                entry.last_category, entry.last_similarity, correct, served_at=entry.last_threshold
            )

    def now(self) -> RulesNow:
        return RulesNow(self, self.load.level() if self.load is not None else 0.0)


class RulesNow:
    """The rules for one lookup: the load level is read once, thresholds computed once each."""

    def __init__(self, rules: CategoryRules, level: float) -> None:
        self.rules, self.level = rules, level
        self._memo: dict[str, Thresholds] = {}

    def thresholds(self, category: str) -> Thresholds:
        if category not in self._memo:
            rules = self.rules
            cat, config = rules._by_name[category], rules.config
            base = cat.threshold if cat.threshold is not None else config.threshold
            if rules.calibrator is not None:
                base = rules.calibrator.threshold(category, default=base).threshold
            relax = self.level * cat.max_relax
            context = cat.context_threshold if cat.context_threshold is not None else config.context_threshold
            self._memo[category] = Thresholds(base - relax, context, config.followup_threshold - relax)
        return self._memo[category]

    def pair(self, query_category: str, entry_category: str) -> Thresholds:
        """A query and an entry of different categories must satisfy both policies."""
        if query_category == entry_category:
            return self.thresholds(query_category)
        return strictest(self.thresholds(query_category), self.thresholds(entry_category))

    def expires_at(self, entry: Entry) -> float | None:
        """Under load an entry may be served up to its category's max_ttl_factor x TTL."""
        if entry.expires_at is None:
            return None
        factor = self.rules._by_name.get(entry.category)
        stretch = self.level * (factor.max_ttl_factor - 1.0) if factor is not None else 0.0
        return entry.expires_at + stretch * (entry.expires_at - entry.created_at)
