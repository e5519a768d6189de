"""Evaluation data from ../shared/data: QQP pairs with a fixed split, and contextual chats.

QQP split: questions are grouped into connected components (two questions are
linked when they appear in one pair), and each component goes to train (60%),
validation (20%) or test (20%) by a hash of its smallest question. No question
text appears in two splits, so nothing tuned on train/validation leaks into test.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import EdgecacheError

SPLITS = ("train", "validation", "test")
CONTEXTUAL_SETS = ("new_claude", "contextual_queries", "context2", "d1", "Synthetic_Dataset_Diverse")


class MissingDataError(EdgecacheError, FileNotFoundError):
    """An evaluation data file that is not where EDGECACHE_DATA (or the repository) puts it."""


def data_root() -> Path:
    """EDGECACHE_DATA, else the shared/data folder next to the checkout."""
    env = os.environ.get("EDGECACHE_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def data_file(path: Path) -> Path:
    """`path` when it exists, else a MissingDataError that says how to point at the data."""
    if not path.is_file():
        raise MissingDataError(
            f"evaluation data file {path} is missing; set EDGECACHE_DATA to the folder holding "
            f"paraphrase/, contextual/ and categories/ (now {data_root()})"
        )
    return path


def qqp_path() -> Path:
    return data_root() / "paraphrase" / "qqp_dev.jsonl.gz"


def contextual_paths(root: Path | None = None) -> dict[str, Path]:
    """MeanCache's contextual sets by name, each checked to exist."""
    folder = (root or data_root()) / "contextual"
    return {name: data_file(folder / f"meancache_{name}.json") for name in CONTEXTUAL_SETS}


@dataclass(frozen=True)
class Pair:
    a: str
    b: str
    label: int


def _component_split(root: str) -> str:
    bucket = int(hashlib.sha256(root.encode()).hexdigest()[:8], 16) % 10
    return "train" if bucket < 6 else "validation" if bucket < 8 else "test"


def load_qqp(path: Path | None = None) -> dict[str, list[Pair]]:
    pairs: list[Pair] = []
    with gzip.open(data_file(path or qqp_path()), "rt", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            a, b = str(row["a"]).strip(), str(row["b"]).strip()
            if a and b:
                pairs.append(Pair(a, b, int(row["label"])))
    out: dict[str, list[Pair]] = {s: [] for s in SPLITS}
    for p, root in zip(pairs, components(pairs), strict=True):
        out[_component_split(root)].append(p)
    return out


def components(pairs: list[Pair]) -> list[str]:
    """Each pair's connected component, named by its smallest question (two questions are
    linked when they appear in one pair): the unit that never straddles two splits."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for p in pairs:
        ra, rb = find(p.a), find(p.b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return [find(p.a) for p in pairs]


@dataclass(frozen=True)
class Conversation:
    """A first turn and a follow-up, with paraphrases of both when the data has them."""

    u0: str
    u1: str
    u0_paraphrase: str | None
    u1_paraphrase: str | None


def load_contextual(root: Path | None = None) -> dict[str, list[Conversation]]:
    paths = contextual_paths(root)
    claude = json.loads(paths.pop("new_claude").read_text())
    out = {
        "new_claude": [
            Conversation(r["u0"], r["u1"], r.get("u0_duplicate"), r.get("u1_duplicate")) for r in claude
        ]
    }
    for name, path in paths.items():
        rows = json.loads(path.read_text())
        out[name] = [Conversation(r["Main Query"], r["Follow-Up Query"], None, None) for r in rows]
    return out


def disjoint_halves(conversations: list[Conversation]) -> tuple[list[Conversation], list[Conversation]]:
    """Two halves that share no text, for choosing thresholds on one and reporting the other.

    new_claude repeats conversations (41 of its 124 rows) and first turns, so alternate rows
    would put the same follow-ups in both halves. Conversations linked by any shared first
    turn, follow-up or paraphrase form one group; groups alternate in order of appearance.
    """
    parent = list(range(len(conversations)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_seen: dict[str, int] = {}
    for i, c in enumerate(conversations):
        for text in (c.u0, c.u1, c.u0_paraphrase, c.u1_paraphrase):
            if text is not None:
                parent[root(i)] = root(first_seen.setdefault(text, i))
    groups: dict[int, list[Conversation]] = {}
    for i, c in enumerate(conversations):
        groups.setdefault(root(i), []).append(c)
    ordered = list(groups.values())
    return (
        [c for g in ordered[0::2] for c in g],
        [c for g in ordered[1::2] for c in g],
    )


@dataclass(frozen=True)
class FollowUpPair:
    """A follow-up cached under its first turn, and one asked later on the same topic."""

    context: str
    cached: str
    asked_context: str
    asked: str
    must_hit: bool  # False: a different question about the same topic


FOLLOWUP_PAIRS = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "followup_pairs.jsonl"


def load_followup_pairs(path: Path = FOLLOWUP_PAIRS) -> list[FollowUpPair]:
    """Hand-written follow-ups (this project's, in the repo): MeanCache's sets ask one
    follow-up per topic, so they never test the hard case inside a conversation, another
    question about the same thing ("When was it built?" cached, "Who designed it?" asked)."""
    if not path.exists():
        raise MissingDataError(f"{path} is missing; it ships in the edgecache repository (benchmarks/data)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    keys = ("context", "cached", "asked_context", "asked")
    return [FollowUpPair(*(r[k] for k in keys), must_hit=bool(r["must_hit"])) for r in rows]


SHARED_FOLLOWUPS = FOLLOWUP_PAIRS.with_name("shared_followups.jsonl")


def load_shared_followups(
    path: Path = SHARED_FOLLOWUPS, sets: dict[str, list[Conversation]] | None = None
) -> dict[tuple[str, frozenset[str]], bool]:
    """Whether the answer cached for a follow-up under one first turn also answers it under
    another, for every pair of MeanCache rows that ask one follow-up under two first turns.

    This project's judgement (in the repo, as row numbers of the shared data and a reason),
    read from the two answers the data records: "What is ATP?" carries over between two
    questions on mitochondria, "When was it signed?" does not between the Magna Carta and the
    Treaty of Versailles. Keyed by (follow-up, {first turn, first turn}).
    """
    if not path.exists():
        raise MissingDataError(f"{path} is missing; it ships in the edgecache repository (benchmarks/data)")
    sets = sets if sets is not None else load_contextual()
    judged: dict[tuple[str, frozenset[str]], bool] = {}
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        convs = sets.get(row["set"])
        i, j = row["rows"]
        if convs is None or not (0 <= i < len(convs) and 0 <= j < len(convs)):
            raise ValueError(f"{path}:{line_no}: no rows {i}, {j} in set {row['set']!r}")
        a, b = convs[i], convs[j]
        if a.u1 != b.u1 or a.u0 == b.u0:
            raise ValueError(
                f"{path}:{line_no}: rows {i}, {j} do not ask one follow-up under two first turns"
            )
        judged[(a.u1, frozenset((a.u0, b.u0)))] = bool(row["carries_over"])
    return judged


@dataclass(frozen=True)
class Labelled:
    text: str
    label: str  # CLINC intent, MT-bench category, or FreshQA fact_type
    group: str = ""  # CLINC domain of the intent; FreshQA split


def load_clinc(split: str = "val", root: Path | None = None) -> list[Labelled]:
    """CLINC150 in-scope queries of a split (train / val), with intent and domain."""
    folder = (root or data_root()) / "categories"
    data = json.loads((folder / "clinc150_data_full.json").read_text())
    if split not in ("train", "val"):
        raise ValueError(f"CLINC split must be train or val (test is kept back), got {split!r}")
    domain_of = {
        intent: domain
        for domain, intents in json.loads((folder / "clinc150_domains.json").read_text()).items()
        for intent in intents
    }
    return [Labelled(text, intent, domain_of[intent]) for text, intent in data[split]]


def load_mt_bench(root: Path | None = None) -> list[Labelled]:
    """MT-bench first turns with their category."""
    path = (root or data_root()) / "categories" / "mt_bench_questions.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [Labelled(r["turns"][0], r["category"]) for r in rows]


def load_freshqa(root: Path | None = None) -> list[Labelled]:
    """FreshQA questions with fact_type (never-, slow-, fast-changing) and split (TEST / DEV)."""
    import csv

    path = (root or data_root()) / "categories" / "freshqa.csv"
    with path.open(newline="", encoding="utf-8") as fh:
        return [Labelled(r["question"], r["fact_type"], r["split"]) for r in csv.DictReader(fh)]


# Intents of CLINC150 whose answers belong to one of the default cache categories (edgecache.policy),
# by what the answer depends on. Device actions and unclear intents (alarm, play_music, ...)
# are left out. Used to score the category classifier and to give the replay stream its truth.
CLINC_DEFAULT_CATEGORY: dict[str, str] = {
    **dict.fromkeys(
        [
            "who_made_you", "meaning_of_life", "who_do_you_work_for", "do_you_have_pets",
            "what_are_your_hobbies", "fun_fact", "what_is_your_name", "where_are_you_from",
            "goodbye", "thank_you", "greeting", "tell_joke", "are_you_a_bot", "how_old_are_you",
            "what_can_i_ask_you",
        ],
        "small_talk",
    ),
    **dict.fromkeys(
        ["weather", "time", "date", "traffic", "exchange_rate", "flight_status", "how_busy", "travel_alert"],
        "time_sensitive",
    ),
    **dict.fromkeys(
        [
            # banking (all), credit cards (all but improve_credit_score)
            "freeze_account", "routing", "pin_change", "bill_due", "pay_bill", "account_blocked",
            "interest_rate", "min_payment", "bill_balance", "transfer", "order_checks", "balance",
            "spending_history", "transactions", "report_fraud",
            "replacement_card_duration", "expiration_date", "damaged_card", "report_lost_card",
            "card_declined", "credit_limit_change", "apr", "redeem_rewards", "credit_limit",
            "rewards_balance", "application_status", "credit_score", "new_card", "international_fees",
            # the user's own lists, calendar, orders, bookings, job account
            "reminder", "reminder_update", "calendar", "calendar_update", "todo_list",
            "todo_list_update", "shopping_list", "shopping_list_update", "order_status",
            "confirm_reservation", "cancel_reservation", "pto_balance", "pto_request_status",
            "pto_used", "pto_request", "payday", "income", "w2", "direct_deposit", "meeting_schedule",
            "schedule_meeting", "last_maintenance",
        ],
        "personal",
    ),
    **dict.fromkeys(
        [
            "definition", "calculator", "measurement_conversion", "spelling", "timezone", "plug_type",
            "calories", "nutrition_info",
        ],
        "stable_fact",
    ),
    **dict.fromkeys(
        ["translate", "meal_suggestion", "travel_suggestion", "restaurant_suggestion", "recipe"], "other"
    ),
}  # fmt: skip
