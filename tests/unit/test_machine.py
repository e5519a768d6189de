from pathlib import Path

from edgecache.machine import describe

CPUINFO = """processor\t: 0
model name\t: Intel(R) Xeon(R) Processor @ 2.00GHz
flags\t\t: fpu sse avx2 avx512f avx512bw avx512_vnni

processor\t: 1
model name\t: Other
flags\t\t: fpu
"""


def test_reads_the_first_processor_model_and_int8_relevant_flags(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(CPUINFO)
    got = describe(info)
    assert got["cpu"] == "Intel(R) Xeon(R) Processor @ 2.00GHz"
    assert got["simd"] == ["avx2", "avx512f", "avx512bw", "avx512_vnni"]
    assert got["cpus"] >= 1 and got["python"].startswith("3.")


def test_without_cpuinfo_it_still_names_python_and_platform(tmp_path: Path) -> None:
    got = describe(tmp_path / "missing")
    assert "cpu" not in got and "simd" not in got
    assert got["platform"] and got["python"]
