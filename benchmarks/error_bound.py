"""Error-bounded thresholds (edgecache.calibration) on QQP: does the bound hold on test?

Pairwise protocol, shipped default setting: learned-64 projection, int8 storage emulation
(`evaluation.emulate_storage`, the similarity `evaluation.pairwise` computes) and the
false-hit guards on. A lookup is one pair; its observation is (similarity, label ==
duplicate). A vetoed pair never hits: it carries no observation but is still a lookup (it
counts in the per-request denominator). Thresholds are calibrated on the validation split
and reported on test.

Two rates (see edgecache.calibration):
- per request (vCache's δ, the default): wrong hits / all lookups;
- per hit: wrong hits / hits served (1 - precision).

Sections of the JSON:
- `main`: per-request δ ∈ {0.01, 0.02, 0.05}, calibrated on all of validation, on test:
  achieved per-request rate, per-hit rate and recall, plus the fixed 0.80 default.
- `horizon`: the same δ with `horizon` = the test split's lookups: the rate measured over
  that many lookups, not the population rate, is what the choice holds to δ.
- `per_hit`: the per-hit rate for several δ (certified only where QQP allows), starts 1 vs 3.
- `cold_start`: calibration sets of n lookups drawn from validation (20 draws each); the
  per-request runs also with that horizon.
- `online`: test split into two halves by connected component; the first half is a
  stream (each lookup: threshold(), count_lookups(); a served hit gives feedback), the
  second is held out. From the default (no seed, with and without exploration) and from
  a validation seed.
- `timing`: µs per threshold() call (memoized and recomputed) and per count_lookups().

    .venv/bin/python benchmarks/error_bound.py   ->  benchmarks/results/error_bound.json
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from edgecache.calibration import OnlineCalibrator, choose_threshold
from edgecache.config import CacheConfig
from edgecache.evaldata import components
from edgecache.evalrun import projection_for, qqp_vectors
from edgecache.evaluation import emulate_storage, pairwise

HERE = Path(__file__).parent
OUT = HERE / "results" / "error_bound.json"
CONFIDENCE = 0.95
MAIN_DELTAS = (0.01, 0.02, 0.05)
HIT_DELTAS = (0.01, 0.02, 0.05, 0.10, 0.15, 0.20, 0.30)
COLD_HIT_DELTAS = (0.15, 0.20, 0.30)
SIZES = (0, 25, 100, 400, 1600, None)  # None: all of validation
DRAWS = 20
WINDOW = 500  # stream lookups per online window
KEY = "qqp"


def similarities(a: np.ndarray, b: np.ndarray, dtype: str) -> np.ndarray:
    """The similarity `evaluation.pairwise` decides on (stored side emulated at dtype)."""
    sa = emulate_storage(a, dtype)
    sb = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(sa * sb, axis=1) / np.maximum(np.linalg.norm(sa, axis=1), 1e-12)


def rates(sims: np.ndarray, ok: np.ndarray, lookups: int, positives: int, threshold: float) -> dict:
    """Outcomes at a threshold; sims / ok: the observations (non-vetoed lookups)."""
    served = sims >= threshold
    hits, wrong = int(served.sum()), int((served & ~ok).sum())
    return {
        "threshold": threshold,
        "lookups": lookups,
        "hits": hits,
        "wrong": wrong,
        "per_request_error": wrong / lookups,
        "false_hit_rate": wrong / hits if hits else 0.0,
        "recall": (hits - wrong) / positives,
    }


def metric(rate: str) -> str:
    return "per_request_error" if rate == "request" else "false_hit_rate"


def timing(val: dict, default: float) -> dict:
    """µs per call on a calibrator holding the whole validation seed plus online levels."""
    cal = OnlineCalibrator(0.02, CONFIDENCE)
    cal.seed(KEY, val["sims"], val["ok"], lookups=val["lookups"])
    for other in ("a", "b", "c"):  # a few more keys, so pooled and own paths both exist
        cal.seed(other, val["sims"][:500], val["ok"][:500])
    cal.threshold(KEY, default)
    rng = np.random.default_rng(5)
    for level in (0.9, 0.92, 0.95):
        cal.count_lookups(KEY, 1000, served_at=level)
        for s in rng.uniform(level, 1.0, 50):
            cal.observe(KEY, float(s), bool(rng.random() > 0.1), served_at=level)
    cal.threshold(KEY, default)
    calls = 200_000
    t0 = time.perf_counter()
    for _ in range(calls):
        cal.threshold(KEY, default)
    memo_us = (time.perf_counter() - t0) / calls * 1e6
    t0 = time.perf_counter()
    for _ in range(calls):
        cal.count_lookups(KEY)
    count_us = (time.perf_counter() - t0) / calls * 1e6
    # A served lookup with feedback: count, observe, then threshold() recomputes.
    recompute = 300
    spent = 0.0
    for s in rng.uniform(0.95, 1.0, recompute):
        cal.count_lookups(KEY)
        cal.observe(KEY, float(s), bool(rng.random() > 0.05))
        t0 = time.perf_counter()
        cal.threshold(KEY, default)
        spent += time.perf_counter() - t0
    # A lookup as the cache does it with no feedback: threshold() + count_lookups().
    t0 = time.perf_counter()
    for _ in range(calls):
        cal.threshold(KEY, default)
        cal.count_lookups(KEY)
    lookup_us = (time.perf_counter() - t0) / calls * 1e6
    return {
        "threshold_memoized_us": round(memo_us, 3),
        "threshold_recomputed_us": round(spent / recompute * 1e6, 1),
        "count_lookups_us": round(count_us, 3),
        "threshold_plus_count_lookups_us": round(lookup_us, 3),
        "note": "one Python thread, uncontended lock; recomputed = after an observe() (feedback)",
    }


def online_run(cal: OnlineCalibrator, stream: np.ndarray, obs: dict, held: dict, default: float) -> dict:
    """Feed the stream lookup by lookup; report windows and the final threshold held out."""
    windows, w_hits, w_wrong, total_wrong, total_hits = [], 0, 0, 0, 0
    choice = cal.threshold(KEY, default)
    for step, i in enumerate(stream, 1):
        choice = cal.threshold(KEY, default)
        cal.count_lookups(KEY)
        if obs["keep"][i] and obs["all_sims"][i] >= choice.threshold:
            ok = bool(obs["all_ok"][i])
            w_hits += 1
            w_wrong += not ok
            cal.observe(KEY, float(obs["all_sims"][i]), ok, served_at=choice.threshold)
        if step % WINDOW == 0 or step == len(stream):
            size = WINDOW if step % WINDOW == 0 else step % WINDOW
            windows.append(
                {
                    "lookups_seen": step,
                    "hits": w_hits,
                    "wrong": w_wrong,
                    "per_request_error": w_wrong / size,
                    "threshold_in_force": choice.threshold,
                    "reason": choice.reason,
                }
            )
            total_wrong += w_wrong
            total_hits += w_hits
            w_hits = w_wrong = 0
    final = cal.threshold(KEY, default)
    return {
        "windows": windows,
        "stream_per_request_error": total_wrong / len(stream),
        "stream_false_hit_rate": total_wrong / total_hits if total_hits else 0.0,
        "final_choice": final.to_dict(),
        "held_out_at_final": rates(
            held["sims"], held["ok"], held["lookups"], held["positives"], final.threshold
        ),
    }


def delta_rows(rows: list[dict]) -> list[str]:
    """Per-request δ table: the choice on validation, its outcome on test."""
    lines = [
        "| target δ | threshold | reason | val UCB | test per-request | test per-hit | test recall |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c, t = r["choice"], r["test"]
        lines.append(
            f"| {r['delta']} | {c['threshold']:.3f} | {c['reason']} | {c['upper_bound']:.4f} | "
            f"{t['per_request_error']:.4f} | {t['false_hit_rate']:.4f} | {t['recall']:.4f} |"
        )
    return lines


def markdown(report: dict) -> str:
    fx = report["fixed_default_on_test"]
    lines = [
        "Per-request rate (wrong hits / all lookups), calibrated on QQP validation "
        f"({report['setting']['validation_lookups']} lookups), reported on test "
        f"({report['setting']['test_lookups']} lookups), confidence {CONFIDENCE}:",
        "",
        *delta_rows(report["main"]),
        f"| fixed 0.80 | 0.800 | - | - | {fx['per_request_error']:.4f} | {fx['false_hit_rate']:.4f} | "
        f"{fx['recall']:.4f} |",
        "",
        f"The same with horizon = {report['setting']['test_lookups']} (the rate measured over that many "
        "lookups, not the population rate, is held to δ):",
        "",
        *delta_rows(report["horizon"]),
    ]
    lines += [
        "",
        "Per-hit rate (wrong hits / hits), same protocol (starts = 3; starts = 1 threshold in brackets):",
        "",
        "| target δ | threshold | reason | test per-hit | test per-request | test recall |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["per_hit"]:
        c, t = r["starts_3"]["choice"], r["starts_3"]["test"]
        lines.append(
            f"| {r['delta']} | {c['threshold']:.3f} ({r['starts_1']['choice']['threshold']:.3f}) | "
            f"{c['reason']} | "
            f"{t['false_hit_rate']:.4f} | {t['per_request_error']:.4f} | {t['recall']:.4f} |"
        )
    lines += [
        "",
        f"Cold start: calibration sets of n validation lookups ({DRAWS} draws; 1 for all), on test. "
        "'over δ': fraction of draws whose test rate exceeds δ; 'worse': fraction worse than the "
        "fixed 0.80 in the same rate:",
        "",
        "| rate | δ | n | mean threshold | mean test rate | over δ | over δ when calibrated (max rate) | "
        "worse than fixed | mean recall | reasons |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["cold_start"]:
        cal = r["fraction_over_delta_when_calibrated"]
        worst = r["max_test_rate_when_calibrated"]
        lines.append(
            f"| {r['rate']}{'' if r['horizon'] is None else ' h=' + str(r['horizon'])} | {r['delta']} | "
            f"{r['n']} | {r['mean_threshold']:.3f} | "
            f"{r['mean_test_rate']:.4f} | "
            f"{r['fraction_over_delta']:.2f} | {'-' if cal is None else f'{cal:.2f} ({worst:.4f})'} | "
            f"{r['fraction_worse_than_fixed']:.2f} | {r['mean_test_recall']:.3f} | "
            + ", ".join(f"{k} {v}" for k, v in sorted(r["reasons"].items()))
            + " |"
        )
    on = report["online"]
    lines += [
        "",
        f"Online, per-request rate: stream of {on['stream_lookups']} test lookups (feedback on every served "
        f"hit), held-out half {on['held_out_lookups']} lookups. Windows of {WINDOW} lookups: "
        "per-request error @ threshold in force at the window's end (c = calibrated, e = exploring, "
        "s = stepped_up, d = default):",
        "",
        "| δ | start | windows | stream per-request | final threshold (reason) | held-out per-request | "
        "held-out per-hit | held-out recall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in on["runs"]:
        w = " ".join(
            f"{x['per_request_error']:.3f}@{x['threshold_in_force']:.3f}{x['reason'][0]}"
            for x in r["windows"]
        )
        h, c = r["held_out_at_final"], r["final_choice"]
        lines.append(
            f"| {r['delta']} | {r['start']} | {w} | {r['stream_per_request_error']:.4f} | "
            f"{c['threshold']:.3f} ({c['reason']}) | {h['per_request_error']:.4f} | "
            f"{h['false_hit_rate']:.4f} | {h['recall']:.4f} |"
        )
    fh = on["held_out_at_fixed_default"]
    lines.append(
        f"| fixed 0.80 | - | - | {on['stream_at_fixed_default']['per_request_error']:.4f} | 0.800 | "
        f"{fh['per_request_error']:.4f} | {fh['false_hit_rate']:.4f} | {fh['recall']:.4f} |"
    )
    tm = report["timing"]
    lines += [
        "",
        f"threshold(): {tm['threshold_memoized_us']} µs memoized, {tm['threshold_recomputed_us']} µs "
        f"recomputed after feedback; count_lookups(): {tm['count_lookups_us']} µs; "
        f"threshold() + count_lookups() per lookup: {tm['threshold_plus_count_lookups_us']} µs.",
    ]
    return "\n".join(lines)


def main() -> None:
    started = time.time()
    config = CacheConfig()
    default = config.threshold
    data = qqp_vectors()
    proj = projection_for(config.projection, data)
    split_obs = {}
    for split in ("validation", "test"):
        a, b, y = data.pair_arrays(split)
        pa, pb = proj.apply(a), proj.apply(b)
        vetoes = [data.veto(p.b, p.a) for p in data.splits[split]] if config.guards else [None] * len(y)
        sims = similarities(pa, pb, config.dtype)
        keep = np.array([v is None for v in vetoes])
        # Cross-check against the evaluation's own pairwise protocol at the default threshold.
        ref = pairwise(pa, pb, y, config.dtype, [default], vetoes)[0]
        mine = rates(sims[keep], y[keep] == 1, len(y), int(y.sum()), default)
        assert (mine["hits"] - mine["wrong"], mine["wrong"]) == (ref.tp, ref.fp), (mine, ref)
        split_obs[split] = {
            "sims": sims[keep],
            "ok": y[keep] == 1,
            "lookups": len(y),
            "positives": int(y.sum()),
            "keep": keep,
            "all_sims": sims,
            "all_ok": y == 1,
        }
    val, test = split_obs["validation"], split_obs["test"]

    def on_test(threshold: float) -> dict:
        return rates(test["sims"], test["ok"], test["lookups"], test["positives"], threshold)

    fixed = on_test(default)
    horizon = test["lookups"]  # the measured-rate guarantee over a test-sized stretch of traffic
    report: dict = {
        "setting": {
            "projection": config.projection,
            "dtype": config.dtype,
            "guards": config.guards,
            "confidence": CONFIDENCE,
            "default_threshold": default,
            "validation_lookups": val["lookups"],
            "test_lookups": test["lookups"],
            "validation_observations": len(val["sims"]),
            "test_observations": len(test["sims"]),
            "vetoed_pairs": {"validation": int((~val["keep"]).sum()), "test": int((~test["keep"]).sum())},
        },
        "fixed_default_on_test": fixed,
        "main": [],
        "horizon": [],
        "per_hit": [],
        "cold_start": [],
    }
    print(f"fixed {default}: test {fixed}", flush=True)

    # ---------------------------------------------------------------- all of validation
    for delta in MAIN_DELTAS:
        ch = choose_threshold(
            val["sims"], val["ok"], delta, CONFIDENCE, default=default, lookups=val["lookups"]
        )
        report["main"].append({"delta": delta, "choice": ch.to_dict(), "test": on_test(ch.threshold)})
        # The same, certifying the rate measured over as many lookups as test holds.
        ch = choose_threshold(
            val["sims"],
            val["ok"],
            delta,
            CONFIDENCE,
            default=default,
            lookups=val["lookups"],
            horizon=horizon,
        )
        report["horizon"].append({"delta": delta, "choice": ch.to_dict(), "test": on_test(ch.threshold)})
    for delta in HIT_DELTAS:
        row: dict = {"delta": delta}
        for starts in (1, 3):
            ch = choose_threshold(
                val["sims"], val["ok"], delta, CONFIDENCE, default=default, starts=starts, rate="hit"
            )
            row[f"starts_{starts}"] = {"choice": ch.to_dict(), "test": on_test(ch.threshold)}
        row["feasible"] = row["starts_3"]["choice"]["reason"] == "calibrated"
        report["per_hit"].append(row)

    # ---------------------------------------------------------------- cold start
    rng = np.random.default_rng(7)
    kept_index = np.cumsum(val["keep"]) - 1
    runs = (
        [("request", d, None) for d in MAIN_DELTAS]
        + [("request", d, horizon) for d in MAIN_DELTAS]
        + [("hit", d, None) for d in COLD_HIT_DELTAS]
    )
    for rate, delta, run_horizon in runs:
        m = metric(rate)
        for size in SIZES:
            draws = []
            for _ in range(DRAWS if size is not None else 1):
                if size is None:
                    sel = np.arange(len(val["keep"]))
                else:
                    sel = rng.choice(len(val["keep"]), size=size, replace=False)
                # n counts calibration *lookups* (pairs); vetoed ones carry no observation.
                rows = kept_index[sel[val["keep"][sel]]]
                ch = choose_threshold(
                    val["sims"][rows],
                    val["ok"][rows],
                    delta,
                    CONFIDENCE,
                    default=default,
                    rate=rate,
                    lookups=len(sel),
                    horizon=run_horizon,
                )
                draws.append((ch, on_test(ch.threshold)))
            achieved = np.array([t[m] for _, t in draws])
            reasons: dict[str, int] = {}
            for ch, _ in draws:
                reasons[ch.reason] = reasons.get(ch.reason, 0) + 1
            certified_rates = [t[m] for ch, t in draws if ch.certified]
            # The draws' own population: all of validation (exchangeable with each draw).
            pool = [
                rates(val["sims"], val["ok"], val["lookups"], int(val["ok"].sum()), ch.threshold)[m]
                for ch, _ in draws
                if ch.certified
            ]
            certified = [r > delta for r in certified_rates]
            report["cold_start"].append(
                {
                    "rate": rate,
                    "delta": delta,
                    "horizon": run_horizon,
                    "n": size if size is not None else "all",
                    "draws": len(draws),
                    "mean_threshold": float(np.mean([ch.threshold for ch, _ in draws])),
                    "mean_test_rate": float(achieved.mean()),
                    "mean_test_per_request_error": float(np.mean([t["per_request_error"] for _, t in draws])),
                    "mean_test_false_hit_rate": float(np.mean([t["false_hit_rate"] for _, t in draws])),
                    "mean_test_recall": float(np.mean([t["recall"] for _, t in draws])),
                    "fraction_over_delta": float(np.mean(achieved > delta)),
                    "calibrated_draws": len(certified),
                    "fraction_over_delta_when_calibrated": float(np.mean(certified)) if certified else None,
                    "max_test_rate_when_calibrated": max(certified_rates) if certified_rates else None,
                    "fraction_over_delta_on_validation_pool_when_calibrated": float(
                        np.mean([r > delta for r in pool])
                    )
                    if pool
                    else None,
                    "fraction_worse_than_fixed": float(np.mean(achieved > fixed[m] + 1e-12)),
                    "fraction_below_default": float(np.mean([ch.threshold < default for ch, _ in draws])),
                    "reasons": reasons,
                }
            )
        print(f"cold start {rate} {delta} horizon {run_horizon} done", flush=True)

    # ---------------------------------------------------------------- online
    roots = components(data.splits["test"])
    half = np.array([int(hashlib.sha256(r.encode()).hexdigest()[:8], 16) % 2 for r in roots])
    stream = np.random.default_rng(3).permutation(np.flatnonzero(half == 0))
    held_idx = np.flatnonzero((half == 1) & test["keep"])
    held = {
        "sims": test["all_sims"][held_idx],
        "ok": test["all_ok"][held_idx],
        "lookups": int((half == 1).sum()),
        "positives": int(test["all_ok"][half == 1].sum()),
    }
    stream_keep = stream[test["keep"][stream]]
    report["online"] = {
        "stream_lookups": len(stream),
        "held_out_lookups": held["lookups"],
        "window_lookups": WINDOW,
        "held_out_at_fixed_default": rates(
            held["sims"], held["ok"], held["lookups"], held["positives"], default
        ),
        "stream_at_fixed_default": rates(
            test["all_sims"][stream_keep],
            test["all_ok"][stream_keep],
            len(stream),
            int(test["all_ok"][stream].sum()),
            default,
        ),
        "runs": [],
    }
    starts_online = (
        ("default", {}),
        ("default_no_exploration", {"explore_gap": None}),
        ("validation_seed", {}),
    )
    for delta in MAIN_DELTAS:
        for start, kwargs in starts_online:
            cal = OnlineCalibrator(delta, CONFIDENCE, **kwargs)
            if start == "validation_seed":
                cal.seed(KEY, val["sims"], val["ok"], lookups=val["lookups"])
            run = online_run(cal, stream, test, held, default)
            report["online"]["runs"].append({"delta": delta, "start": start, **run})
            h = run["held_out_at_final"]
            print(
                f"online {delta} {start}: stream {run['stream_per_request_error']:.4f}, final "
                f"{run['final_choice']['threshold']} ({run['final_choice']['reason']}), held-out "
                f"{h['per_request_error']:.4f} recall {h['recall']:.4f}",
                flush=True,
            )

    report["timing"] = timing(val, default)
    report["seconds"] = round(time.time() - started, 1)
    report["tables_markdown"] = markdown(report)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2))
    print(report["tables_markdown"])
    print(f"wrote {OUT} in {report['seconds']} s")


if __name__ == "__main__":
    main()
