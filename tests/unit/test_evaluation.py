import itertools
import json

import numpy as np
import pytest

from edgecache import CacheConfig
from edgecache.evaldata import (
    Conversation,
    FollowUpPair,
    Pair,
    _component_split,
    load_contextual,
    load_followup_pairs,
    load_shared_followups,
)
from edgecache.evaluation import (
    balanced_rows,
    contextual,
    emulate_storage,
    followup_pairs,
    pairwise,
    pairwise_hits,
    pooled,
    retrieval,
    same_topic,
    sweep_of,
)
from edgecache.metrics import at, best, precision_interval, scores
from tests.helpers import shared_data


def unit(*v):
    x = np.asarray(v, np.float32)
    return x / np.linalg.norm(x)


def test_scores_and_selection():
    s = scores(0.8, tp=8, fp=2, fn=8, n_queries=20)
    assert (s.precision, s.recall) == (0.8, 0.5) and abs(s.f1 - 0.6153846) < 1e-6 and s.hit_rate == 0.5
    sweep = [scores(0.7, 9, 9, 1, 20), scores(0.8, 8, 2, 2, 20), scores(0.9, 5, 0, 5, 20)]
    assert best(sweep).threshold == 0.8
    assert best(sweep, min_precision=0.95).threshold == 0.9
    assert at(sweep, 0.79).threshold == 0.8
    # A threshold nothing passes has precision 1.0 by convention; it shows no precision.
    nothing = [scores(0.7, 9, 9, 1, 20), scores(0.99, 0, 0, 10, 20)]
    assert best(nothing, min_precision=0.95).threshold == 0.7  # no eligible point: best F1 of all


def test_pairwise_counts_every_pair_once():
    a = np.stack([unit(1, 0), unit(1, 0), unit(1, 0)])
    b = np.stack([unit(1, 0.1), unit(0, 1), unit(1, 0.2)])
    labels = np.array([1, 0, 0])
    (s,) = pairwise(a, b, labels, thresholds=[0.9])
    assert (s.tp, s.fp, s.fn) == (1, 1, 0)


def test_balanced_rows_keep_every_duplicate_and_as_many_others():
    labels = np.array([1, 0, 0, 1, 0, 0, 0, 1, 0, 0])
    rows = balanced_rows(labels, seed=3)
    assert set(np.flatnonzero(labels == 1)) <= set(rows) and len(rows) == 6 and len(set(rows)) == 6
    assert labels[rows].sum() == 3
    assert np.array_equal(rows, balanced_rows(labels, seed=3))
    with pytest.raises(ValueError, match="cannot balance"):
        balanced_rows(np.array([1, 1, 0]), seed=0)


def test_sweep_over_rows_counts_only_those_pairs():
    a = np.stack([unit(1, 0), unit(1, 0), unit(1, 0), unit(1, 0)])
    b = np.stack([unit(1, 0.1), unit(0, 1), unit(1, 0.2), unit(1, 0.05)])
    labels = np.array([1, 0, 0, 0])
    hits = pairwise_hits(a, b, thresholds=[0.9])
    assert hits.tolist() == [[True, False, True, True]]
    (all_pairs,) = sweep_of(hits, labels, [0.9])
    (some,) = sweep_of(hits, labels, [0.9], rows=np.array([0, 1]))
    assert (all_pairs.tp, all_pairs.fp, all_pairs.fn) == (1, 2, 0)
    assert (some.tp, some.fp, some.fn, some.precision) == (1, 0, 0, 1.0)


def test_retrieval_needs_own_pair_and_lenient_accepts_exact_text():
    pairs = [
        Pair("how to cook rice", "how do I cook rice", 1),
        Pair("best laptop", "which laptop is best", 0),
        Pair("how to cook rice?", "how to cook rice", 1),  # first text differs, exact repeat as query
    ]
    table = {
        "how to cook rice": unit(1, 0, 0),
        "how do I cook rice": unit(1, 0.05, 0),
        "how to cook rice?": unit(1, 0.3, 0),
        "best laptop": unit(0, 1, 0),
        "which laptop is best": unit(0, 1, 0.1),
    }
    sweep, info = retrieval(pairs, table.__getitem__, dtype="f32", thresholds=[0.9])
    (s,) = sweep
    # pair 1 hits its own entry (tp); pair 2 hits its own entry but is not a duplicate (fp);
    # pair 3's query is the exact text of pair 1's entry, nearer than its own (fp, lenient ok)
    assert (s.tp, s.fp, s.fn) == (1, 2, 1)
    assert info["lenient_precision"][0.9] == 2 / 3


def test_storage_emulation_keeps_unit_length_close():
    x = np.random.default_rng(0).normal(size=(50, 64)).astype(np.float32)
    for dtype in ("f32", "f16", "i8"):
        y = emulate_storage(x, dtype)
        cos = np.sum(y * (x / np.linalg.norm(x, axis=1, keepdims=True)), axis=1) / np.linalg.norm(y, axis=1)
        assert cos.min() > 0.99


def test_same_topic_ignores_framing_words():
    assert same_topic(
        "Describe the significance of the Mona Lisa.", "Describe the cultural significance of the Mona Lisa."
    )
    assert same_topic(
        "What are the key features of the Renaissance?", "What is the significance of the Renaissance?"
    )
    assert not same_topic(
        "What are the causes of the French Revolution?", "What are the main causes of World War II?"
    )


def test_split_assignment_is_stable():
    assert _component_split("how do I learn python?") == _component_split("how do I learn python?")
    buckets = {_component_split(f"question {i}") for i in range(200)}
    assert buckets == {"train", "validation", "test"}


def test_followup_pairs_count_own_hits_and_same_topic_false_hits(embedder):
    pairs = [
        FollowUpPair(
            "tell me about the eiffel tower",
            "how tall is it",
            "tell me about the eiffel tower",
            "how tall is it really",
            True,
        ),
        FollowUpPair(
            "tell me about mount everest",
            "who first climbed it",
            "tell me about mount everest",
            "who first climbed it",
            False,
        ),  # labelled different: any hit is a false hit
        FollowUpPair(
            "what is metformin",
            "what is the usual dose",
            "what is metformin",
            "can i drink alcohol with it",
            False,
        ),
        FollowUpPair(
            "explain vaccines", "how do they work", "explain vaccines", "why do my knees hurt", True
        ),
    ]
    config = CacheConfig(threshold=0.9, followup_threshold=0.8, context_threshold=0.9)
    got = followup_pairs(pairs, embedder, config)
    assert (got["tp"], got["fp"], got["fn"]) == (1, 1, 1)
    assert got["false_hits"] == {"same_topic": 1} and got["negatives"] == {"same_topic": 2}
    both = pooled(got, got)
    assert (both["tp"], both["fp"], both["fn"]) == (2, 2, 2) and both["precision"] == 0.5
    shipped = load_followup_pairs()
    assert len(shipped) >= 100 and {p.must_hit for p in shipped} == {True, False}


def test_balanced_report_picks_on_balanced_validation_and_reports_the_whole_split_threshold():
    from edgecache.evalrun import BALANCED_SEEDS, balanced_report

    labels = {"validation": np.array([1, 0, 0, 1, 0, 0]), "test": np.array([1, 0, 0, 0, 1, 0])}
    # Pairs as similarities; a pair is a hit at t when its similarity >= t.
    sims = {
        "validation": np.array([0.9, 0.6, 0.5, 0.75, 0.55, 0.4]),
        "test": np.array([0.7, 0.5, 0.6, 0.5, 0.9, 0.3]),
    }
    thresholds = [0.6, 0.7, 0.8]
    seen = []

    def sweep(split, rows):
        seen.append(split)
        hits = np.array([sims[split] >= t for t in thresholds])
        return sweep_of(hits, labels[split], thresholds, rows=rows)

    report = balanced_report(sweep, labels, whole_validation_threshold=0.8)
    # Validation's duplicates reach 0.75 and no non-duplicate 0.7, whichever are drawn.
    assert report["validation_best"]["threshold"] == 0.7 and report["validation_best"]["f1"] == 1.0
    assert seen.count("validation") == seen.count("test") == len(BALANCED_SEEDS)
    chosen, whole = report["test_at_validation_threshold"], report["test_at_whole_validation_threshold"]
    assert chosen["threshold"] == 0.7 and whole["threshold"] == 0.8
    # At 0.7 both test duplicates hit and no non-duplicate reaches 0.7: F1 1 on every draw.
    assert chosen["f1"] == 1.0 and chosen["pairs"] == 4
    # At 0.8 only one of the two duplicates hits.
    assert whole["recall"] == 0.5 and whole["precision"] == 1.0
    assert "test_at_whole_validation_threshold" not in balanced_report(sweep, labels)


def test_disjoint_halves_keep_linked_conversations_together():
    from edgecache.evaldata import Conversation, disjoint_halves

    convs = [
        Conversation("france", "population?", "tell me of france", "how many people?"),
        Conversation("japan", "population?", None, None),  # shares the follow-up with france
        Conversation("peru", "capital?", None, None),
        Conversation("peru", "language?", None, None),  # shares the first turn
        Conversation("chile", "capital?", None, None),  # linked to peru through "capital?"
        Conversation("kenya", "currency?", None, None),
    ]
    tune, held = disjoint_halves(convs)
    assert [c.u0 for c in tune] == ["france", "japan", "kenya"]
    assert [c.u0 for c in held] == ["peru", "peru", "chile"]

    def texts(half):
        return {t for c in half for t in (c.u0, c.u1, c.u0_paraphrase, c.u1_paraphrase) if t}

    assert not texts(tune) & texts(held)


def test_precision_interval_is_exact_clopper_pearson():
    # 9 right of 10 hits: the textbook exact 95% interval.
    low, high = precision_interval(9, 1)
    assert low == pytest.approx(0.5550, abs=1e-4) and high == pytest.approx(0.9975, abs=1e-4)
    # All right: the lower end is (alpha / 2) ** (1 / n).
    low, high = precision_interval(45, 0)
    assert low == pytest.approx(0.025 ** (1 / 45), abs=1e-6) and high == 1.0
    assert precision_interval(0, 0) == (0.0, 1.0)


SIGNED = "when was it signed"
ATP = "what is atp"
CARTA, VERSAILLES = "tell me about the magna carta", "tell me about the treaty of versailles"
MITO_ROLE, MITO_PARTS = "explain mitochondria in cells", "describe mitochondria structure"
SHARED = [
    Conversation(CARTA, SIGNED, None, None),
    Conversation(VERSAILLES, SIGNED, None, None),
    Conversation(MITO_ROLE, ATP, None, None),
    Conversation(MITO_PARTS, ATP, None, None),
    Conversation(VERSAILLES, SIGNED, None, None),  # the data repeats rows; each asks once
]


def test_a_follow_up_under_another_first_turn_counts_by_whether_its_answer_carries_over(embedder):
    # A context threshold no pair misses, so every follow-up asked finds its cached one.
    config = CacheConfig(threshold=0.9, followup_threshold=0.8, context_threshold=-1.0)
    judged = {
        (SIGNED, frozenset((CARTA, VERSAILLES))): False,
        (ATP, frozenset((MITO_ROLE, MITO_PARTS))): True,
    }
    got = contextual(SHARED, embedder, config, judged)
    # The Versailles ask got the Magna Carta's date: wrong. The ATP answer serves both.
    assert got["negatives"]["other_first_turn"] == 1 and got["false_hits"]["other_first_turn"] == 1
    assert got["shared_follow_up"] == {"asked": 1, "right_hits": 1}
    assert (got["tp"], got["fn"]) == (1, 0)
    # Unjudged, the topic-word check decides: these two mitochondria turns share too few words.
    unjudged = contextual(SHARED, embedder, config)
    assert unjudged["negatives"]["other_first_turn"] == 2 and unjudged["false_hits"]["other_first_turn"] == 2
    assert unjudged["shared_follow_up"] == {"asked": 0, "right_hits": 0} and "f1" not in unjudged


def test_shared_followup_judgements_name_rows_that_share_a_follow_up(tmp_path):
    sets = {"d1": SHARED}
    path = tmp_path / "judged.jsonl"
    path.write_text(
        json.dumps({"set": "d1", "rows": [0, 1], "carries_over": False, "why": "other dates"})
        + "\n"
        + json.dumps({"set": "d1", "rows": [3, 2], "carries_over": True, "why": "one definition"})
        + "\n"
    )
    assert load_shared_followups(path, sets) == {
        (SIGNED, frozenset((CARTA, VERSAILLES))): False,
        (ATP, frozenset((MITO_ROLE, MITO_PARTS))): True,
    }
    for bad in ({"set": "d1", "rows": [0, 2]}, {"set": "d1", "rows": [0, 9]}, {"set": "d2", "rows": [0, 1]}):
        path.write_text(json.dumps({**bad, "carries_over": True, "why": "x"}) + "\n")
        with pytest.raises(ValueError, match=r"judged\.jsonl:1"):
            load_shared_followups(path, sets)
    with pytest.raises(FileNotFoundError, match="benchmarks/data"):
        load_shared_followups(tmp_path / "missing.jsonl", sets)


def test_every_follow_up_the_data_asks_under_two_first_turns_is_judged():
    shared_data("contextual")
    sets = load_contextual()
    judged = load_shared_followups(sets=sets)
    for convs in sets.values():
        firsts: dict[str, set[str]] = {}
        for c in convs:
            firsts.setdefault(c.u1, set()).add(c.u0)
        for follow_up, turns in firsts.items():
            for a, b in itertools.combinations(sorted(turns), 2):
                assert (follow_up, frozenset((a, b))) in judged, (follow_up, a, b)
    assert {v for v in judged.values()} == {True, False}


def test_paraphrased_first_turns_asked_alone_are_reported_apart_from_follow_ups(embedder):
    config = CacheConfig(threshold=0.9, followup_threshold=0.8, context_threshold=0.9)
    convs = [
        Conversation(
            "tell me about the magna carta", "when was it signed", "tell me about the magna carta", "x y z"
        ),
    ]
    got = contextual(convs, embedder, config)
    # The first turn asked again alone hits its entry; the follow-up reworded beyond recognition misses.
    assert (got["tp"], got["fn"]) == (1, 1)
    only = got["follow_ups_only"]
    assert (only["tp"], only["fn"], only["f1"]) == (0, 1, 0.0)
    assert pooled(only, only)["tp"] == 0


def test_context_thresholds_are_chosen_at_the_precision_floor_else_the_most_precise():
    from edgecache.evalrun import choose_precise

    def point(tp, fp, fn, threshold):
        p = tp / (tp + fp) if tp + fp else 1.0
        r = tp / (tp + fn)
        return ({"tp": tp, "fp": fp, "precision": p, "f1": 2 * p * r / (p + r) if tp else 0.0}, threshold)

    loose, strict, silent = point(60, 10, 10, 0.4), point(49, 1, 21, 0.8), point(0, 0, 70, 0.95)
    assert choose_precise([loose, strict, silent]) == ((0.8,), True)
    # One false hit that no threshold removes: nothing reaches 0.98; the most precise point is
    # chosen, not the best F1 (0.4), and never one that serves nothing.
    held = point(26, 1, 46, 0.75)
    assert choose_precise([loose, held, point(15, 1, 57, 0.85), silent]) == ((0.75,), False)
