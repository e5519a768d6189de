"""The one place where edgecache imports its native runtimes.

usearch 2.26 imported before onnxruntime 1.32 segfaults the process (onnxruntime's
start-up trips over the libstdc++ state usearch's extension set up); the reverse
order is safe. Every module that needs either one imports it from here, so the
order is fixed whichever public entry point a user touches first. If the user's
own code imported usearch first, we refuse with an ImportError instead of letting
the next line crash the interpreter.
"""

import sys

if "usearch" in sys.modules and "onnxruntime" not in sys.modules:
    raise ImportError(
        "usearch was imported before onnxruntime; with usearch 2.26 and onnxruntime 1.32 "
        "that order crashes the process. Import edgecache (or onnxruntime) before usearch."
    )

import onnxruntime
from usearch.index import Index, MetricKind, ScalarKind

__all__ = ["Index", "MetricKind", "ScalarKind", "onnxruntime"]
