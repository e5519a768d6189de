import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_core_install_pulls_no_torch():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"]).lower()
    for heavy in ("torch", "transformers", "sentence-transformers", "onnx>", "onnx="):
        assert heavy not in core
    assert any(d.startswith("torch==") for d in project["optional-dependencies"]["build"])


def test_readme_names_the_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    assert "scripts/serve" in readme and "scripts/test" in readme
    assert "scripts/test" in (ROOT / ".ci" / "run").read_text()
