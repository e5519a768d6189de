"""The benchmark alternates our timed lookups with GPTCache's, so both see the same load."""

import sys
import textwrap

import pytest

from edgecache import bench


class _Theirs:
    queries = 30

    def __init__(self, log: list, fail_at: int | None = None) -> None:
        self.log, self.fail_at = log, fail_at

    def lookups(self, start: int, stop: int) -> list[float]:
        if self.fail_at is not None and start >= self.fail_at:
            raise RuntimeError("the GPTCache baseline exited: boom")
        self.log.append(("theirs", start, stop))
        return [1.0] * (stop - start)

    def finish(self) -> dict:
        self.log.append(("finish",))
        return {"get_p50_ms": 1.0}


def test_blocks_alternate_and_every_query_is_timed_once():
    log: list = []
    texts = [f"q{i}" for i in range(100)]
    ms, report = bench.alternate_lookups(lambda t: log.append(("ours", t)), texts, _Theirs(log), blocks=10)
    assert len(ms) == 100 and report == {"get_p50_ms": 1.0, "alternated_with_ours_in_blocks": 10}
    assert [e[1] for e in log if e[0] == "ours"] == texts
    kinds = [e[0] for e in log]
    # ten of ours, then three of theirs, block after block; the report comes last
    assert kinds == (["ours"] * 10 + ["theirs"]) * 10 + ["finish"]
    assert [e[1:] for e in log if e[0] == "theirs"] == [(3 * i, 3 * i + 3) for i in range(10)]


def test_a_failing_baseline_leaves_our_timings_whole():
    log: list = []
    texts = [f"q{i}" for i in range(40)]
    ms, report = bench.alternate_lookups(lambda t: None, texts, _Theirs(log, fail_at=9), blocks=10)
    assert len(ms) == 40
    assert "boom" in report["error"] and ("finish",) not in log


def test_side_speaks_the_baseline_scripts_protocol(tmp_path, monkeypatch):
    script = tmp_path / "baseline.py"
    script.write_text(
        textwrap.dedent(
            """
            import json, sys
            assert "--serve" in sys.argv
            print("library noise", file=sys.stderr)
            print(json.dumps({"ready": True}), flush=True)
            for line in sys.stdin:
                req = json.loads(line)
                if "get" in req:
                    a, b = req["get"]
                    print(json.dumps({"ms": [float(i) for i in range(a, b)]}), flush=True)
                else:
                    print(json.dumps({"get_p50_ms": 2.5}), flush=True)
                    break
            """
        )
    )
    monkeypatch.setattr(bench, "GPTCACHE_SCRIPT", script)
    side = bench.GPTCacheSide(sys.executable, entries=10, queries=4)
    try:
        assert side.lookups(1, 3) == [1.0, 2.0]
        assert side.finish() == {"get_p50_ms": 2.5}
    finally:
        side.close()


def test_a_baseline_that_cannot_start_says_why(tmp_path, monkeypatch):
    script = tmp_path / "baseline.py"
    script.write_text("import sys\nsys.exit('no module named gptcache')\n")
    monkeypatch.setattr(bench, "GPTCACHE_SCRIPT", script)
    with pytest.raises(RuntimeError, match="no module named gptcache"):
        bench.GPTCacheSide(sys.executable, entries=10, queries=4)
