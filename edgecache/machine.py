"""What a result was measured on. The shipped int8 encoder gave measurably different vectors
on two CPUs (onnxruntime picks its int8 kernels by SIMD features), so results record them."""

from __future__ import annotations

import os
import platform
from pathlib import Path

# The features that pick onnxruntime's int8 and fp32 kernels on x86.
SIMD_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")


def describe(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict:
    """Python, core count, platform, and where /proc/cpuinfo exists the CPU model and its
    SIMD flags."""
    out: dict = {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return out
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break  # the first processor describes them all
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    out["cpu"] = fields.get("model name", platform.processor() or "unknown")
    out["simd"] = [f for f in SIMD_FLAGS if f in flags]
    return out
