"""Per-category cache policy: thresholds, TTLs, quotas, eviction and load bounds.

Queries differ in how densely they cluster and how fast their answers go stale: code
snippets stay right for months, a price for minutes, small talk never goes stale but is
rarely repeated word for word. One global threshold and TTL cannot fit all of them, so
every entry belongs to a category and each category carries its own policy.

Every field left None falls back to the cache-wide value in CacheConfig, so the
defaults below change only what differs by category.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from .errors import ConfigError
from .eviction import STRATEGIES
from .numbers import is_number, is_positive

MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0


@dataclass(frozen=True)
class CategoryPolicy:
    name: str
    # None: the cache-wide threshold (CacheConfig.threshold / context_threshold).
    threshold: float | None = None
    context_threshold: float | None = None
    # Entries live the shorter of this and the cache-wide ttl_seconds (None: no limit here).
    ttl_seconds: float | None = None
    max_entries: int | None = None
    max_bytes: int | None = None
    eviction: str = "lru"
    # Under full backend load the similarity threshold may drop by at most `max_relax`
    # and entries may be served up to `max_ttl_factor` times their TTL after creation.
    max_relax: float = 0.0
    max_ttl_factor: float = 1.0
    # Texts that describe the category for the zero-shot classifier (a description and
    # example queries). Empty: the built-in seeds of a default category name.
    seeds: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip() or len(self.name) > 64:
            raise ConfigError(f"category name must be 1-64 characters, got {self.name!r}")
        where = f"category {self.name!r}"
        for name in ("threshold", "context_threshold"):
            value = getattr(self, name)
            if value is not None and (not is_number(value) or not -1.0 <= value <= 1.0):
                raise ConfigError(f"{where}: {name} must be a number in [-1, 1] or null, got {value!r}")
        if self.ttl_seconds is not None and not is_positive(self.ttl_seconds):
            raise ConfigError(f"{where}: ttl_seconds must be a positive number or null")
        for name in ("max_entries", "max_bytes"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(f"{where}: {name} must be a positive integer or null, got {value!r}")
        if self.eviction not in STRATEGIES:
            raise ConfigError(f"{where}: eviction must be one of {sorted(STRATEGIES)}, got {self.eviction!r}")
        if not is_number(self.max_relax) or not 0.0 <= self.max_relax <= 0.5:
            raise ConfigError(f"{where}: max_relax must be in [0, 0.5], got {self.max_relax!r}")
        if not is_number(self.max_ttl_factor) or not 1.0 <= self.max_ttl_factor <= 100.0:
            raise ConfigError(f"{where}: max_ttl_factor must be in [1, 100], got {self.max_ttl_factor!r}")
        seeds = tuple(self.seeds) if isinstance(self.seeds, list | tuple) else None
        if seeds is None or not all(isinstance(s, str) and s.strip() for s in seeds):
            raise ConfigError(f"{where}: seeds must be a list of non-empty strings")
        object.__setattr__(self, "seeds", seeds)


def refuse_unknown_keys(data: dict, allowed: set[str], prefix: str) -> None:
    """A misspelt setting is an error, not silently ignored."""
    unknown = set(data) - allowed
    if unknown:
        raise ConfigError(f"{prefix} {', '.join(sorted(unknown))}")


# Sensible defaults, by what goes stale and what a wrong answer costs. No threshold is
# overridden: per-category thresholds come from feedback (false_hit_target) rather than
# from guesses, and the cache-wide one was chosen on QQP validation.
DEFAULT_CATEGORIES: tuple[CategoryPolicy, ...] = (
    # Code answers stay right for months and popular snippets are asked again and again.
    CategoryPolicy("code", ttl_seconds=30 * DAY, eviction="lfu", max_relax=0.02, max_ttl_factor=2.0),
    # Greetings never go stale and a loose answer does little harm.
    CategoryPolicy("small_talk", ttl_seconds=7 * DAY, max_relax=0.05, max_ttl_factor=4.0),
    CategoryPolicy("stable_fact", ttl_seconds=90 * DAY, eviction="cost", max_relax=0.03, max_ttl_factor=2.0),
    # Weather, prices, scores: a stale answer is a wrong answer. Under load they may live
    # twice as long but never hit on a looser match.
    CategoryPolicy("time_sensitive", ttl_seconds=15 * MINUTE, max_ttl_factor=2.0),
    # The user's own account and orders: short-lived and never relaxed.
    CategoryPolicy("personal", ttl_seconds=1 * HOUR),
    CategoryPolicy("other", eviction="cost", max_relax=0.02, max_ttl_factor=2.0),
)


@dataclass(frozen=True)
class Policy:
    categories: tuple[CategoryPolicy, ...] = DEFAULT_CATEGORIES
    # Category of entries the classifier cannot place (and of all entries if classify=False).
    fallback: str = "other"
    # Classify queries zero-shot into the categories; False: only explicit categories.
    classify: bool = True
    # A query whose best category scores below this goes to the fallback: a shaky guess
    # must not give an evergreen question a 15-minute TTL. 0.25 maximised the mean of CLINC
    # train accuracy (mapped categories) and the share of QQP train questions kept out of
    # the specific categories (0.749 / 0.913); benchmarks/categories.py reports both sides.
    min_category_score: float | None = 0.25
    # Keep each category's false-hit rate (wrong hits per lookup, vCache's δ) at or below
    # this, with `confidence`, by raising or lowering its threshold from feedback. None: fixed
    # thresholds.
    false_hit_target: float | None = None
    confidence: float = 0.95
    # Hold the target on the rate measured over this many lookups (what a dashboard shows for
    # a period), not only on the long-run rate; costs recall for short horizons. None: long run.
    false_hit_horizon: int | None = None

    def __post_init__(self) -> None:
        cats = self.categories
        if not isinstance(cats, tuple) or not cats or not all(isinstance(c, CategoryPolicy) for c in cats):
            raise ConfigError("policy.categories must be a non-empty list of categories")
        names = [c.name for c in cats]
        if len(set(names)) != len(names):
            raise ConfigError(f"policy.categories has duplicate names: {names}")
        if self.fallback not in names:
            raise ConfigError(f"policy.fallback {self.fallback!r} is not one of the categories {names}")
        if not isinstance(self.classify, bool):
            raise ConfigError("policy.classify must be true or false")
        score = self.min_category_score
        if score is not None and (not is_number(score) or not -1.0 <= score <= 1.0):
            raise ConfigError(f"policy.min_category_score must be in [-1, 1] or null, got {score!r}")
        target = self.false_hit_target
        if target is not None and (not is_number(target) or not 0.0 < target < 1.0):
            raise ConfigError(f"policy.false_hit_target must be in (0, 1) or null, got {target!r}")
        if not is_number(self.confidence) or not 0.5 <= self.confidence < 1.0:
            raise ConfigError(f"policy.confidence must be in [0.5, 1), got {self.confidence!r}")
        horizon = self.false_hit_horizon
        if horizon is not None and (isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1):
            raise ConfigError(f"policy.false_hit_horizon must be an integer >= 1 or null, got {horizon!r}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.categories)

    def calibration_settings(self) -> dict[str, Any]:
        """The `OnlineCalibrator` settings this policy fixes (with false_hit_target set)."""
        return {
            "delta": self.false_hit_target,
            "confidence": self.confidence,
            "horizon": self.false_hit_horizon,
        }

    def category(self, name: str) -> CategoryPolicy:
        for c in self.categories:
            if c.name == name:
                return c
        raise ConfigError(f"unknown category {name!r}; known: {list(self.names)}")

    @classmethod
    def from_dict(cls, data: Any) -> Policy:
        """From plain data. `categories` as a list replaces the defaults; as a mapping
        {name: {field: value}} it changes only those fields of the default categories."""
        if not isinstance(data, dict):
            raise ConfigError("policy must be a table/object of settings")
        refuse_unknown_keys(data, {f.name for f in fields(cls)}, "unknown policy keys:")
        data = dict(data)
        cats = data.get("categories")
        if isinstance(cats, list):
            data["categories"] = tuple(_category(c) for c in cats)
        elif isinstance(cats, dict):
            data["categories"] = _override(DEFAULT_CATEGORIES, cats)
        elif cats is not None:
            raise ConfigError("policy.categories must be a list of categories or a mapping of overrides")
        return cls(**data)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["categories"] = [{**asdict(c), "seeds": list(c.seeds)} for c in self.categories]
        return out


def _category(data: Any) -> CategoryPolicy:
    if not isinstance(data, dict):
        raise ConfigError("each category must be a table/object with at least a name")
    refuse_unknown_keys(
        data, {f.name for f in fields(CategoryPolicy)}, f"category {data.get('name')!r}: unknown keys"
    )
    if "name" not in data:
        raise ConfigError("each category needs a name")
    return CategoryPolicy(**data)


def _override(base: tuple[CategoryPolicy, ...], changes: dict) -> tuple[CategoryPolicy, ...]:
    by_name = {c.name: c for c in base}
    out = list(base)
    for name, change in changes.items():
        if not isinstance(change, dict):
            raise ConfigError(f"policy.categories.{name} must be a table/object of fields")
        if name in by_name:
            allowed = {f.name for f in fields(CategoryPolicy)} - {"name"}
            refuse_unknown_keys(change, allowed, f"category {name!r}: unknown keys")
            out[out.index(by_name[name])] = replace(by_name[name], **change)
        else:
            out.append(_category({"name": name, **change}))
    return tuple(out)
