"""The one place where edgecache imports its native runtimes.

usearch 2.26 imported before onnxruntime 1.32 segfaults the process (both bundle
conflicting native libraries); the reverse order is safe. Every module that needs
either one imports it from here, so the order is fixed no matter which public
entry point a user touches first.
"""

import onnxruntime
from usearch.index import Index, MetricKind, ScalarKind

__all__ = ["Index", "MetricKind", "ScalarKind", "onnxruntime"]
