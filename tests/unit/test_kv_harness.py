"""The KV-eval harness's task builders and scoring (benchmarks/kv_harness.py), without a model.

Token counts come from a whitespace counter, so placement can be checked exactly.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import kv_harness as kh  # benchmarks/ is a folder of scripts, not a package


def words(text: str) -> int:
    return len(text.split())


# 200 distinct six-word sentences, none of which looks like a needle.
SENTENCES = [
    f"Sentence number {chr(65 + i // 26)}{chr(65 + i % 26)} talks about weather." for i in range(200)
]


def needle_offset(context: str, statement: str) -> int:
    """Words of haystack before the needle (other needles' words excluded)."""
    before = context[: context.index(statement)]
    return words(before)


@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_niah_needle_sits_at_requested_depth(depth: float) -> None:
    (sample,) = kh.niah_samples(SENTENCES, [300], [depth], 1, words)
    needle_text = kh.NEEDLE_TEMPLATE.format(key=_key(sample.questions[0]), value=sample.answers[0])
    assert sample.context.count(needle_text) == 1
    hay_words = words(sample.context) - words(needle_text)
    # Sentences are 6 words: the nearest boundary is at most 3 words from the target.
    assert abs(needle_offset(sample.context, needle_text) - depth * hay_words) <= 3
    assert sample.positions[0] == pytest.approx(depth, abs=3.01 / hay_words)
    if depth == 0.0:
        assert sample.context.startswith(needle_text)
    if depth == 1.0:
        assert sample.context.endswith(needle_text)


def test_niah_context_length_and_grid() -> None:
    samples = kh.niah_samples(SENTENCES, [200, 400], [0.0, 0.5, 1.0], 2, words)
    assert len(samples) == 2 * 3 * 2
    assert len({s.sample_id for s in samples}) == len(samples)
    for s in samples:
        assert 0.9 * s.target_tokens <= words(s.context) <= s.target_tokens
        assert s.prefixes == (kh.ANSWER_PREFIX_TEMPLATE.format(key=_key(s.questions[0])),)
    # One haystack per (length, repetition): only the needle's place changes with depth.
    same = [s for s in samples if s.sample_id.startswith("niah-s0-200-r0-")]
    stripped = {s.context.replace(_needle(s), "").split() == _hay_words(same[0]) for s in same}
    assert stripped == {True}


def test_builders_are_deterministic() -> None:
    a = kh.niah_samples(SENTENCES, [250], [0.5], 2, words, seed=3)
    b = kh.niah_samples(SENTENCES, [250], [0.5], 2, words, seed=3)
    c = kh.niah_samples(SENTENCES, [250], [0.5], 2, words, seed=4)
    assert a == b
    assert a != c


def test_shared_context_spreads_distinct_facts() -> None:
    (sample,) = kh.shared_context_samples(SENTENCES, 400, 1, 4, words)
    assert len(sample.questions) == len(sample.answers) == len(sample.prefixes) == 4
    assert len(set(sample.answers)) == 4
    keys = [_key(q) for q in sample.questions]
    assert len(set(keys)) == 4
    hay_words = words(sample.context) - sum(words(kh.NEEDLE_TEMPLATE.format(key=k, value="0")) for k in keys)
    for key, value, depth, pos in zip(keys, sample.answers, sample.depths, sample.positions, strict=True):
        statement = kh.NEEDLE_TEMPLATE.format(key=key, value=value)
        assert sample.context.count(statement) == 1
        assert pos == pytest.approx(depth, abs=3.01 / hay_words)
        assert value in sample.context and key in sample.context
    # Depths are (i + 0.5) / n: one fact in each quarter.
    assert sorted(sample.depths) == [0.125, 0.375, 0.625, 0.875]
    # Facts appear in the context in depth order.
    order = sorted(zip(sample.depths, keys, strict=True))
    offsets = [sample.context.index(f"secret code of {k} ") for _, k in order]
    assert offsets == sorted(offsets)


def test_insert_needles_same_boundary_keeps_both() -> None:
    hay = SENTENCES[:10]
    n1, n2 = kh.Needle("the amber falcon", "1111"), kh.Needle("the jade tortoise", "2222")
    text, achieved = kh.insert_needles(hay, [(n1, 0.5), (n2, 0.5)], words)
    assert achieved == [0.5, 0.5]
    assert text.index(n1.statement) < text.index(n2.statement)
    with pytest.raises(ValueError):
        kh.insert_needles(hay, [(n1, 1.5)], words)


def test_make_needles_distinct_values_and_digits() -> None:
    needles = kh.make_needles(12, random.Random(0), digits=4)
    assert len({n.key for n in needles}) == 12
    assert len({n.value for n in needles}) == 12
    assert all(len(n.value) == 4 and not n.value.startswith("0") for n in needles)
    with pytest.raises(ValueError):
        kh.make_needles(len(kh.NEEDLE_KEYS) + 1, random.Random(0))


def test_haystack_too_short_raises() -> None:
    with pytest.raises(ValueError, match="not enough text"):
        kh.build_haystack(SENTENCES[:3], 500, words, random.Random(0))


@pytest.mark.parametrize(
    ("answer", "exact", "contains"),
    [
        (" 4721.", True, True),
        ("4721", True, True),
        ("4,721", True, True),
        ("The secret code is 4721.", False, True),
        (" 47210", False, False),
        ("14721", False, False),
        (" 4722.", False, False),
        ("", False, False),
        ("47 21", True, True),
    ],
)
def test_score_answer(answer: str, exact: bool, contains: bool) -> None:
    assert kh.score_answer(answer, "4721") == kh.Score(exact=exact, contains=contains)


def test_clean_filters_distractors() -> None:
    assert kh._clean("the weather in paris is nice today") == "The weather in paris is nice today."
    assert kh._clean("What happened in 2023 to the economy?") is None  # a year could pass for a code
    assert kh._clean("Write some code that sorts a list of numbers.") is None
    assert kh._clean("too short") is None


def test_load_sentences_from_shared_data() -> None:
    from tests.helpers import shared_data

    sentences = kh.load_sentences(shared_data("categories").parent)
    assert len(sentences) > 5000
    assert len(set(sentences)) == len(sentences)
    assert not any("secret" in s.lower() for s in sentences)


def test_summarize_ratios_against_full_and_snapkv() -> None:
    def rec(press: str, budget: float, hits: list[bool], kv: int) -> dict:
        return {
            "press": press,
            "budget": budget,
            "task": "niah",
            "sample_id": f"s-{press}",
            "contains": hits,
            "exact": hits,
            "kv_bytes_after_prefill": kv,
            "kv_bytes_attended": kv,
            "kv_bytes_peak": kv + 10,
            "kv_tokens_after_prefill": kv // 10,
            "context_tokens": 100,
            "prefill_s": 1.0,
            "decode_s": 0.5,
            "decode_steps": 5,
        }

    records = [
        rec("full", 1.0, [True, True, True, True], 1000),
        rec("snapkv", 0.1, [True, False, False, False], 100),
        rec("windowkv", 0.1, [True, True, True, False], 100),
        {"press": "broken", "budget": 0.1, "error": "RuntimeError: boom"},
    ]
    rows = {(r["press"], r["task"]): r for r in kh.summarize(records)}
    ours = rows[("windowkv", "niah")]
    assert ours["accuracy"] == 0.75
    assert ours["accuracy_vs_full"] == 0.75
    assert ours["accuracy_vs_snapkv"] == 3.0
    assert ours["accuracy_minus_snapkv"] == 0.5
    assert ours["kv_bytes_vs_full"] == 0.1
    assert ours["decode_ms_per_step"] == 100.0
    assert rows[("snapkv", "niah")]["accuracy_vs_snapkv"] is None
    assert ("broken", "niah") not in rows
    assert rows[("full", "all")]["n_questions"] == 4


def test_kv_size_counts_tensors() -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("edgecache.llm.presses")
    from types import SimpleNamespace

    class Layer:
        def __init__(self, n: int) -> None:
            self.keys = torch.zeros(1, 3, n, 64)
            self.values = torch.zeros(1, 3, n, 64)

    class Cache:
        def __init__(self) -> None:
            self.layers = [Layer(10), Layer(30)]

    model = SimpleNamespace(layers=[SimpleNamespace(self_attn=SimpleNamespace()) for _ in range(2)])
    nbytes, tokens = kh.kv_size(model, Cache())
    assert nbytes == 2 * 3 * 64 * 4 * (10 + 30)
    assert tokens == 20


def _key(question: str) -> str:
    return question.split("secret code of ", 1)[1].split("?", 1)[0]


def _needle(sample: kh.Sample) -> str:
    return kh.NEEDLE_TEMPLATE.format(key=_key(sample.questions[0]), value=sample.answers[0])


def _hay_words(sample: kh.Sample) -> list[str]:
    return sample.context.replace(_needle(sample), "").split()
