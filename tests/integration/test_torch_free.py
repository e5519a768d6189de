import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_runtime_never_imports_torch():
    code = (
        "import sys\n"
        "for name in ('torch', 'transformers', 'onnx'):\n"
        "    sys.modules[name] = None  # any import of them now raises\n"
        "import edgecache, edgecache.server, edgecache.cli, edgecache.registry\n"
        "from edgecache import SemanticCache\n"
        "c = SemanticCache('u')\n"
        "c.insert('How do I reset my password?', 'Use the link.')\n"
        "print(c.lookup('how can I reset my password').hit)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy(), timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"
