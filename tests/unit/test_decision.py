import pytest

from edgecache.decision import Candidate, Reason, Thresholds, decide, first_hit

T = Thresholds(similarity=0.8, context=0.7)


def cand(sim=0.9, ctx=None, q_ctx=False, e_ctx=False, expires=None, right=0, wrong=0, entry_id=1):
    return Candidate(entry_id, sim, ctx, q_ctx, e_ctx, expires, wrong, right)


@pytest.mark.parametrize(
    ("candidate", "reason"),
    [
        (cand(), Reason.HIT),
        (cand(sim=0.79), Reason.BELOW_THRESHOLD),
        (cand(sim=0.8), Reason.HIT),  # threshold is inclusive
        (cand(expires=100.0), Reason.EXPIRED),  # now == expiry is expired
        (cand(expires=100.5), Reason.HIT),
        (cand(q_ctx=True, e_ctx=False, ctx=0.0), Reason.CONTEXT_SHAPE),
        (cand(q_ctx=False, e_ctx=True), Reason.CONTEXT_SHAPE),
        (cand(q_ctx=True, e_ctx=True, ctx=0.69), Reason.CONTEXT_MISMATCH),
        (cand(q_ctx=True, e_ctx=True, ctx=None), Reason.CONTEXT_MISMATCH),
        (cand(q_ctx=True, e_ctx=True, ctx=0.7), Reason.HIT),
        (cand(wrong=2, right=1), Reason.DISPUTED),
        (cand(wrong=1, right=1), Reason.HIT),
        # NaN is neither below nor above a threshold: it must never pass as a hit.
        (cand(sim=float("nan")), Reason.BELOW_THRESHOLD),
        (cand(q_ctx=True, e_ctx=True, ctx=float("nan")), Reason.CONTEXT_MISMATCH),
    ],
)
def test_decide(candidate, reason):
    verdict = decide(candidate, T, now=100.0)
    assert verdict.reason == reason
    assert verdict.hit == (reason == Reason.HIT)


def test_a_guard_is_the_last_word_after_the_context_checks():
    from dataclasses import replace

    vetoed = replace(cand(q_ctx=True, e_ctx=True, ctx=0.9), guard="context entities")
    assert decide(vetoed, T, now=100.0).reason == Reason.GUARDED
    # A context that does not match is reported as such, whatever the guards say of it.
    assert decide(replace(vetoed, context_similarity=0.3), T, now=100.0).reason == Reason.CONTEXT_MISMATCH
    assert decide(replace(vetoed, entry_has_context=False), T, now=100.0).reason == Reason.CONTEXT_SHAPE


def test_first_hit_skips_unusable_nearest():
    expired = cand(sim=0.99, expires=50.0, entry_id=1)
    good = cand(sim=0.85, entry_id=2)
    verdict = first_hit([good, expired], T, now=100.0)
    assert verdict.hit and verdict.candidate.entry_id == 2


def test_first_hit_reports_nearest_miss_and_empty():
    verdict = first_hit([cand(sim=0.5, entry_id=3), cand(sim=0.6, entry_id=4)], T, now=0.0)
    assert not verdict.hit and verdict.reason == Reason.BELOW_THRESHOLD and verdict.candidate.entry_id == 4
    assert first_hit([], T, now=0.0).reason == Reason.EMPTY
