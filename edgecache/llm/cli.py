"""`edgecache llm ...`: commands for the LLM workers (torch is imported only when one runs)."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_llm_build(args: argparse.Namespace) -> int:
    from .model import build_packaged_model, packaged_model_path

    home = Path(args.home) if args.home else None
    if not args.force:
        try:
            path = packaged_model_path(home)
        except FileNotFoundError:
            pass
        else:
            print(f"already built: {path} (use --force to rebuild)")
            return 0
    build_packaged_model(home)
    return 0


def add_llm_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `edgecache llm` and its subcommands on the top-level subparsers."""
    llm = sub.add_parser("llm", help="LLM workers: build the packaged SmolLM2 copy")
    lsub = llm.add_subparsers(dest="llm_command", required=True)
    build = lsub.add_parser(
        "build", help="convert the packaged SmolLM2-135M-Instruct GGUF to safetensors in $EDGECACHE_HOME/llm"
    )
    build.add_argument("--home", help="install under this folder instead of $EDGECACHE_HOME")
    build.add_argument("--force", action="store_true", help="rebuild even when a built copy exists")
    build.set_defaults(func=cmd_llm_build)
    return llm


__all__ = ["add_llm_parser", "cmd_llm_build"]
