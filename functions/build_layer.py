"""Build the AWS Lambda layer zip (or the smaller edge bundle) for edgecache.

    .venv/bin/python functions/build_layer.py --arch x86_64|arm64 --out build/layer [--variant lambda|edge]

The zip holds
    python/                 -> /opt/python (on the Lambda runtime's sys.path): the torch-free
                               runtime wheels (pins read from pyproject.toml), edgecache, and,
                               in the lambda variant, edgecache_functions (the handler)
    edgecache-home/models/  -> /opt/edgecache-home: the built int8 encoder (CURRENT + its folder)
Set EDGECACHE_HOME=/opt/edgecache-home on the function; the handler is
`edgecache_functions.handler.handle`. Target the python3.12+ runtimes (Amazon Linux 2023):
onnxruntime 1.32, numpy 2 and numkong need glibc >= 2.28, which the python3.11 runtime
(Amazon Linux 2, glibc 2.26) lacks. boto3 is not bundled: the runtime ships it.

Wheels are resolved for manylinux <= 2.28 of the chosen architecture and CPython 3.12, so the
build runs on any machine with pip. What the runtime never imports is removed (see PRUNE_* and
the report); the result is then checked by `--check` (a fresh python3.12 with only the bundle
on its path: import, model load, first lookup) and by benchmarks/layer.py.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY_VERSION = "3.12"
MANYLINUX_MAX = 28  # glibc 2.28: the newest any bundled .so may need
ARCHES = {"x86_64": "x86_64", "arm64": "aarch64"}
VARIANTS = ("lambda", "edge")
MODEL_FILES = ("manifest.json", "model.onnx", "tokenizer.json")  # what load_encoder reads
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
LAYER_PYTHON = "python"
LAYER_HOME = "edgecache-home"
OPT = "/opt"  # where Lambda unpacks layers; .pyc files record /opt/python/... as their source path

# Distributions pip installs besides the pinned ones that the runtime does import.
RUNTIME_TRANSITIVE = {
    "numkong": "usearch/__init__ loads numkong._numkong (usearch's SIMD kernels)",
    "tqdm": "usearch.index imports tqdm at module level",
}
# Everything else pip resolves is dropped; why each is safe to drop:
DROP_REASONS = {
    "huggingface-hub": "tokenizers needs it only for Tokenizer.from_pretrained (we load a file)",
    "hf-xet": "huggingface-hub download backend",
    "protobuf": "onnxruntime tools/quantization only; InferenceSession does not import it",
    "flatbuffers": "onnxruntime tools (ORT format conversion) only",
    "packaging": "onnxruntime tools/transformers only",
}

# Path patterns (relative to python/) removed from both variants. fnmatch, '/' separated;
# a pattern matching a folder removes the folder.
PRUNE_COMMON = [
    "bin",  # console scripts pip put beside the packages
    "*/__pycache__",  # from the build interpreter; recompiled with python3.12 below
    "*/tests",
    "*.pyi",
    "*/py.typed",
    "*.pxd",
    "*.h",
    "*.c",
    "*.a",
    "*/RECORD",  # lists files we removed; nothing at run time reads it
    "*/INSTALLER",
    "*/REQUESTED",
    "*/direct_url.json",
    # onnxruntime: offline tooling the inference path never imports
    "onnxruntime/transformers",
    "onnxruntime/quantization",
    "onnxruntime/tools",
    "onnxruntime/datasets",
    "onnxruntime/backend",  # the ONNX backend-test API (imports onnx)
    # the C-API shared library for non-Python users; onnxruntime_pybind11_state.so is
    # self-contained (its NEEDED list has no libonnxruntime.so), 35 MB
    "onnxruntime/capi/libonnxruntime.so.*",
    "onnxruntime/capi/convert_npz_to_onnx_adapter.py",
    "onnxruntime/capi/onnxruntime_collect_build_info.py",
    # numpy: build/embedding support and tooling
    "numpy/_core/include",
    "numpy/_core/lib",
    "numpy/random/lib",
    "numpy/random/_examples",
    "numpy/f2py",
    "numpy/_pyinstaller",
    # numpy subpackages `import numpy` does not load and edgecache, onnxruntime, tokenizers
    # and usearch never use (usearch.kmeans would need numpy.random; edgecache does not call it).
    # Together ~1.2 MB zipped: what keeps the x86_64 layer under the 50 MiB direct upload.
    "numpy/random",
    "numpy/fft",
    "numpy/polynomial",
    "numpy/ma",
    "numpy/testing",
    "numpy/typing",  # numpy._typing (used at import) stays
    "numpy/doc",
    "numpy/ctypeslib*",
    "numpy/_core/_*_tests.*",  # numpy's own test extension modules
    "numpy/_core/_simd.*",  # SIMD self-test module; `import numpy` never loads it
    "numpy/conftest.py",
    "numpy/*/conftest.py",
    "tokenizers/tools",  # notebook visualizer (HTML/CSS)
    "usearch/server.py",
    "usearch/client.py",
    "usearch/eval.py",
    "usearch/numba.py",
    "tqdm/notebook.py",
    "tqdm/contrib",
    "tqdm/tk.py",
    "tqdm/rich.py",
    "tqdm/keras.py",
    "tqdm/dask.py",
    "tqdm/completion.sh",
    "tqdm/tqdm.1",
    "msgpack/fallback.py",  # pure-python fallback when _cmsgpack is present
]
# The edge bundle also drops what `SemanticCache` + the encoder never touch.
PRUNE_EDGE = [
    "*.dist-info/METADATA",  # dist-info keeps only licence files in the edge bundle
    "*.dist-info/WHEEL",
    "*.dist-info/entry_points.txt",
    "*.dist-info/top_level.txt",
    "*.dist-info/sboms",
    "onnxruntime/capi/libonnxruntime_providers_shared.so",  # loads non-CPU EPs only
    "usearch/io.py",
]
# edgecache modules (relative to edgecache/) no bundle needs: benchmarks, evaluation, the
# model build (torch) and the CLI. No runtime module imports them (the cold-start check
# would fail if one did).
DEV_EDGECACHE = [
    "bench.py",
    "cli.py",
    "evaldata.py",
    "evalrun.py",
    "evaluation.py",
    "metrics.py",
    "modelbuild.py",
    "projection_fit.py",
]
# The edge bundle also leaves out the AWS stores (boto3) and the HTTP service, and keeps only
# the default projection (see build()).
EDGE_DROP_EDGECACHE = [
    "aws_stores.py",
    "server.py",
    "proxy.py",
    "registry.py",
]
# Licence texts stay (dist-info/licenses, LICENSE, ThirdPartyNotices).


def log(msg: str) -> None:
    print(msg, flush=True)


# ----------------------------------------------------------------------------- inputs


def runtime_requirements(pyproject: Path = REPO / "pyproject.toml") -> list[str]:
    """The `[project] dependencies` pins, exactly as written in pyproject.toml."""
    return list(tomllib.loads(pyproject.read_text())["project"]["dependencies"])


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(req: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
    if not match:
        raise ValueError(f"cannot parse requirement {req!r}")
    return canonical(match.group(1))


def find_python312(explicit: str | None = None) -> str | None:
    """A real python3.12 binary (not a pyenv shim: shims cost startup time and need PYENV vars)."""
    if explicit:
        return explicit
    candidates = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3.12")), reverse=True)
    for path in [*candidates, "/usr/bin/python3.12", "/usr/local/bin/python3.12"]:
        if os.access(path, os.X_OK):
            return path
    found = shutil.which("python3.12")
    if found:
        try:
            out = subprocess.run(
                [found, "-c", "import sys; print(sys.executable)"], capture_output=True, text=True, timeout=30
            )
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            pass
    return None


def model_source(home: Path | None) -> tuple[Path, Path]:
    """(models/<name> root, the CURRENT model folder) of the given or default EDGECACHE_HOME."""
    sys.path.insert(0, str(REPO))
    from edgecache.home import DEFAULT_MODEL_NAME, edgecache_home, models_dir

    root = models_dir(home or edgecache_home()) / DEFAULT_MODEL_NAME
    pointer = root / "CURRENT"
    if not pointer.is_file():
        raise SystemExit(f"no built encoder under {root}: run `.venv/bin/edgecache model build` first")
    return root, root / pointer.read_text().strip()


# ----------------------------------------------------------------------------- steps


def pip_install(reqs: list[str], arch: str, target: Path, pip: list[str]) -> None:
    plat = ARCHES[arch]
    # pip takes --platform literally (no "and older"): list every manylinux level <= 2.28.
    platforms = [f"manylinux_2_{n}_{plat}" for n in range(MANYLINUX_MAX, 16, -1)] + [f"manylinux2014_{plat}"]
    cmd = [
        *pip,
        "install",
        "--quiet",
        "--no-compile",
        "--disable-pip-version-check",
        "--target",
        str(target),
        "--python-version",
        PY_VERSION,
        "--implementation",
        "cp",
        "--only-binary=:all:",
        *[a for p in platforms for a in ("--platform", p)],
        *reqs,
    ]
    # This machine's pip config lists local mirrors that lack most projects; their
    # "Location ... is ignored" warnings are noise. Everything else pip says is shown.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if "is ignored: it is neither a file nor a directory" not in line:
            print("    pip: " + line.rstrip(), flush=True)
    if proc.wait() != 0:
        raise subprocess.CalledProcessError(proc.returncode, cmd)


def installed_distributions(site: Path) -> dict[str, Path]:
    out = {}
    for info in site.glob("*.dist-info"):
        meta = (info / "METADATA").read_text(errors="replace")
        name = re.search(r"^Name:\s*(.+)$", meta, re.M)
        if name:
            out[canonical(name.group(1).strip())] = info
    return out


def remove_distribution(site: Path, info: Path) -> int:
    """Delete a distribution's files as listed in its RECORD; returns bytes removed."""
    removed = 0
    with open(info / "RECORD", newline="") as fh:
        for row in csv.reader(fh):
            if not row:
                continue
            path = (site / row[0]).resolve()
            if path.is_file() and site.resolve() in path.parents:
                removed += path.stat().st_size
                path.unlink()
    if info.exists():
        removed += tree_size(info)
        shutil.rmtree(info)
    prune_empty_dirs(site)
    return removed


def prune_empty_dirs(root: Path) -> None:
    for dirpath, _dirs, _files in sorted(os.walk(root), key=lambda t: -len(t[0])):
        p = Path(dirpath)
        if p != root and not any(p.iterdir()):
            p.rmdir()


def tree_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def prune(site: Path, patterns: list[str]) -> list[tuple[str, int]]:
    """Remove files/folders under site whose relative path matches a pattern."""
    removed: list[tuple[str, int]] = []
    for dirpath, dirs, files in os.walk(site, topdown=True):
        rel_dir = Path(dirpath).relative_to(site).as_posix()
        for d in list(dirs):
            rel = f"{rel_dir}/{d}" if rel_dir != "." else d
            if any(fnmatch.fnmatchcase(rel, pat) for pat in patterns):
                full = Path(dirpath) / d
                removed.append((rel + "/", tree_size(full)))
                shutil.rmtree(full)
                dirs.remove(d)
        for f in files:
            rel = f"{rel_dir}/{f}" if rel_dir != "." else f
            if any(fnmatch.fnmatchcase(rel, pat) for pat in patterns):
                full = Path(dirpath) / f
                removed.append((rel, full.stat().st_size))
                full.unlink()
    prune_empty_dirs(site)
    return removed


def copy_sources(src: Path, dest: Path, skip: list[str] = ()) -> None:
    """A pure-Python package: its .py files and package data, no caches."""
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if "__pycache__" in rel.parts or path.is_dir() or path.suffix in (".pyc", ".pyo"):
            continue
        if rel.as_posix() in skip:
            continue
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, out)


def find_strip(arch: str) -> list[str] | None:
    native = os.uname().machine == ARCHES[arch]
    names = (["strip"] if native else []) + [f"{ARCHES[arch]}-linux-gnu-strip", "llvm-strip"]
    for name in names:
        path = shutil.which(name)
        if path:
            return [path, "--strip-unneeded"]
    return None


def is_shared_object(path: Path) -> bool:
    return re.search(r"\.so(\.[0-9.]+)?$", path.name) is not None


def has_symbols(so: Path) -> bool:
    """Whether the ELF still carries a symbol table or debug info (else strip gains nothing)."""
    readelf = shutil.which("readelf") or shutil.which("llvm-readelf")
    if not readelf:
        return True
    out = subprocess.run([readelf, "-S", "--wide", str(so)], capture_output=True, text=True).stdout
    return " .symtab " in out or " .debug_" in out


def _readelf(args: list[str], so: Path) -> str:
    readelf = shutil.which("readelf") or shutil.which("llvm-readelf")
    return subprocess.run([readelf, *args, str(so)], capture_output=True, text=True).stdout if readelf else ""


def elf_problem(so: Path, original: Path | None = None) -> str | None:
    """Why the dynamic loader would refuse this file, judged from its headers (works for
    any architecture): every PT_LOAD must keep (vaddr - offset) a multiple of its alignment
    (glibc: "ELF load command address/offset not page-aligned"), and stripping must not
    change the dynamic section (NEEDED, RPATH) or the dynamic symbol count."""
    if not (shutil.which("readelf") or shutil.which("llvm-readelf")):
        return None
    for line in _readelf(["-lW"], so).splitlines():
        parts = line.split()
        if parts[:1] == ["LOAD"] and len(parts) >= 8:
            offset, vaddr, align = int(parts[1], 16), int(parts[2], 16), int(parts[-1], 16)
            if align > 1 and ((vaddr - offset) % align or align % 4096):
                return f"LOAD offset {parts[1]} / vaddr {parts[2]} not aligned to {parts[-1]}"
    if original is not None:

        def dynamic(path: Path) -> list[str]:
            lines = _readelf(["-dW"], path).splitlines()
            return sorted(
                ln.split(")", 1)[-1].strip()
                for ln in lines
                if re.search(r"\((NEEDED|RPATH|RUNPATH|SONAME)\)", ln)
            )

        def dynsyms(path: Path) -> int:
            return sum(
                1 for ln in _readelf(["--dyn-syms", "-W"], path).splitlines() if re.match(r"\s*\d+:", ln)
            )

        if dynamic(so) != dynamic(original):
            return "dynamic section changed"
        if dynsyms(so) != dynsyms(original):
            return "dynamic symbol table changed"
    return None


def strip_shared_objects(site: Path, strip: list[str]) -> tuple[int, int, list[str], list[str]]:
    """strip --strip-unneeded the .so files that still have symbols (into a copy, kept only
    if strip succeeds). Libraries auditwheel grafted into `<pkg>.libs/` are left alone: they
    were rewritten by patchelf, and stripping them broke their load segments here
    ("ELF load command address/offset not page-aligned" for numpy's OpenBLAS)."""
    before = after = 0
    failed, stripped = [], []
    for so in sorted(p for p in site.rglob("*") if p.is_file() and is_shared_object(p)):
        rel = so.relative_to(site).as_posix()
        if rel.split("/")[0].endswith(".libs") or not has_symbols(so):
            continue
        size = so.stat().st_size
        tmp = so.with_name(so.name + ".stripped")
        res = subprocess.run([*strip, "-o", str(tmp), str(so)], capture_output=True, text=True)
        problem = elf_problem(tmp, so) if res.returncode == 0 and tmp.is_file() else res.stderr.strip()[:200]
        if problem is None:
            os.replace(tmp, so)
            stripped.append(f"{rel} ({size / 1e6:.1f} -> {so.stat().st_size / 1e6:.1f} MB)")
        else:
            tmp.unlink(missing_ok=True)
            failed.append(f"{rel}: kept unstripped ({problem})")
        before += size
        after += so.stat().st_size
    return before, after, failed, stripped


def compile_pyc(python: str, site: Path, sourceless: bool = False) -> int:
    """python3.12 .pyc files; unchecked-hash: no mtime in the file (reproducible) and no
    source stat at import. Tracebacks name /opt/python/... (where Lambda mounts it).
    sourceless: legacy `module.pyc` beside each module, then the .py files are deleted
    (smaller; tracebacks lose their source lines). Returns the bytes of .py removed."""
    subprocess.run(
        [
            python,
            "-I",
            "-m",
            "compileall",
            "-q",
            "-j",
            "0",
            "--invalidation-mode",
            "unchecked-hash",
            *(["-b"] if sourceless else []),
            "-s",
            str(site),
            "-p",
            f"{OPT}/{LAYER_PYTHON}",
            str(site),
        ],
        check=True,
    )
    removed = 0
    if sourceless:
        for py in sorted(site.rglob("*.py")):
            if py.with_suffix(".pyc").is_file():
                removed += py.stat().st_size
                py.unlink()
    return removed


def copy_model(root: Path, folder: Path, dest_home: Path) -> int:
    from edgecache.home import sha256_file

    manifest = json.loads((folder / "manifest.json").read_text())
    if sha256_file(folder / "model.onnx") != manifest["sha256"]:
        raise SystemExit(f"{folder}/model.onnx does not match its manifest; rebuild the model")
    out_root = dest_home / "models" / root.name
    (out_root / folder.name).mkdir(parents=True)
    for name in MODEL_FILES:
        shutil.copy2(folder / name, out_root / folder.name / name)
    (out_root / "CURRENT").write_text(folder.name + "\n")
    return tree_size(out_root)


def precompute_seed_vectors(layer_home: Path) -> int:
    """Run the default policy's classifier once against the layer's home, so the seed
    vectors file lands in its embeddings/ folder (same model files, same cache key)."""
    code = (
        "from edgecache.categories import shared_classifier\n"
        "from edgecache.config import CacheConfig\n"
        "from edgecache.embedder import shared_embedder\n"
        "c = CacheConfig()\n"
        "shared_classifier(shared_embedder(c.projection), c.policy)\n"
    )
    env = {**os.environ, "EDGECACHE_HOME": str(layer_home)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    return tree_size(layer_home / "embeddings")


def write_zip(stage: Path, out: Path) -> None:
    """Sorted entries, fixed timestamps and modes: same inputs, same bytes."""
    files = sorted(p for p in stage.rglob("*") if p.is_file())
    tmp = out.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for path in files:
            rel = path.relative_to(stage).as_posix()
            info = zipfile.ZipInfo(rel, ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3
            mode = 0o755 if is_shared_object(path) else 0o644
            info.external_attr = (0o100000 | mode) << 16
            zf.writestr(info, path.read_bytes(), compresslevel=9)
    os.replace(tmp, out)


# ----------------------------------------------------------------------------- ELF check

_VERSION_RE = re.compile(r"Name:\s*((GLIBC|GLIBCXX|CXXABI|GCC)_([0-9.]+))")


def _vkey(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split(".") if x.isdigit())


def elf_requirements(site: Path) -> dict:
    """Highest GLIBC_/GLIBCXX_/CXXABI_/GCC_ symbol versions any bundled .so needs
    (readelf -V reads every ELF architecture, so this also checks the arm64 bundle)."""
    readelf = shutil.which("readelf") or shutil.which("llvm-readelf")
    if not readelf:
        return {"checked": False, "reason": "no readelf on this machine"}
    top: dict[str, tuple[str, str]] = {}
    for so in sorted(p for p in site.rglob("*") if p.is_file() and is_shared_object(p)):
        out = subprocess.run([readelf, "-V", "--wide", str(so)], capture_output=True, text=True).stdout
        for _full, kind, ver in _VERSION_RE.findall(out):
            if kind not in top or _vkey(ver) > _vkey(top[kind][0]):
                top[kind] = (ver, so.relative_to(site).as_posix())
    glibc = top.get("GLIBC", ("0", ""))[0]
    return {
        "checked": True,
        "tool": Path(readelf).name + " -V",
        "max": {k: {"version": v, "file": f} for k, (v, f) in sorted(top.items())},
        "glibc_max": glibc,
        "glibc_ok_2_28": _vkey(glibc) <= (2, MANYLINUX_MAX),
    }


# ----------------------------------------------------------------------------- build


@dataclass
class BuildReport:
    arch: str
    variant: str
    zip_path: str
    stage: str
    unzipped_bytes: int = 0
    zipped_bytes: int = 0
    model_bytes: int = 0
    python_bytes: int = 0
    pyc: bool = True
    sources_removed_bytes: int = 0
    requirements: list[str] = field(default_factory=list)
    kept_distributions: dict[str, str] = field(default_factory=dict)
    dropped_distributions: dict[str, str] = field(default_factory=dict)
    pruned_bytes: int = 0
    pruned: list[str] = field(default_factory=list)
    strip: dict = field(default_factory=dict)
    elf: dict = field(default_factory=dict)
    biggest: list[tuple[str, int]] = field(default_factory=list)
    zip_sha256: str = ""
    seconds: float = 0.0


def build(
    arch: str = "x86_64",
    out: Path = REPO / "build" / "layer",
    variant: str = "lambda",
    home: Path | None = None,
    python: str | None = None,
    pyc: bool = True,
    strip: bool = True,
    pip: list[str] | None = None,
) -> BuildReport:
    if arch not in ARCHES:
        raise SystemExit(f"--arch must be one of {sorted(ARCHES)}")
    if variant not in VARIANTS:
        raise SystemExit(f"--variant must be one of {VARIANTS}")
    started = time.perf_counter()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    name = f"edgecache-{variant}-layer-py{PY_VERSION.replace('.', '')}-{arch}" + ("" if pyc else "-nopyc")
    stage = out / name
    zip_path = out / f"{name}.zip"
    report = BuildReport(arch, variant, str(zip_path), str(stage), pyc=pyc)
    step = 0

    def progress(msg: str) -> None:
        nonlocal step
        step += 1
        log(f"[{variant}/{arch} {time.perf_counter() - started:6.1f}s] {step}. {msg}")

    python = python or find_python312()
    if pyc and not python:
        raise SystemExit("python3.12 not found (pass --python, or --no-pyc)")
    root, folder = model_source(home)
    if stage.exists():
        shutil.rmtree(stage)
    site = stage / LAYER_PYTHON

    reqs = runtime_requirements()
    report.requirements = reqs
    keep = {requirement_name(r): "pinned in pyproject.toml" for r in reqs}
    keep.update(RUNTIME_TRANSITIVE)
    with tempfile.TemporaryDirectory(prefix="edgecache-layer-") as tmp:
        target = Path(tmp) / "site"
        progress(f"pip install {' '.join(reqs)} (cp312, manylinux<=2.{MANYLINUX_MAX} {ARCHES[arch]})")
        pip_install(reqs, arch, target, pip or [sys.executable, "-m", "pip"])
        dists = installed_distributions(target)
        progress(f"resolved {len(dists)} distributions; dropping those the runtime never imports")
        for dist, info in sorted(dists.items()):
            version = info.name.removesuffix(".dist-info").split("-")[-1]
            if dist in keep:
                report.kept_distributions[f"{dist}=={version}"] = keep[dist]
            else:
                freed = remove_distribution(target, info)
                report.dropped_distributions[f"{dist}=={version}"] = (
                    DROP_REASONS.get(dist, "dependency of a dependency; not imported at run time")
                    + f" ({freed / 1e6:.1f} MB)"
                )
        shutil.copytree(target, site)

    progress("adding edgecache" + (" + edgecache_functions" if variant == "lambda" else "") + " sources")
    edge = variant == "edge"
    skip = DEV_EDGECACHE + (EDGE_DROP_EDGECACHE if edge else [])
    if edge:
        from edgecache.config import CacheConfig

        default = f"projection-{CacheConfig().projection}.npz"
        skip = [
            *skip,
            *(f"assets/{p.name}" for p in (REPO / "edgecache" / "assets").glob("*.npz") if p.name != default),
        ]
    copy_sources(REPO / "edgecache", site / "edgecache", skip)
    if not edge:
        copy_sources(REPO / "functions" / "edgecache_functions", site / "edgecache_functions")

    progress("pruning tests, tooling and unused native libraries")
    removed = prune(site, PRUNE_COMMON + (PRUNE_EDGE if edge else []))
    report.pruned = [
        f"{p} ({n / 1e6:.2f} MB)" for p, n in sorted(removed, key=lambda t: -t[1]) if n >= 50_000
    ]
    report.pruned_bytes = sum(n for _, n in removed)
    report.pruned += [f"edgecache/{s}" for s in skip]

    if strip:
        tool = find_strip(arch)
        if tool:
            progress(f"stripping .so files with {Path(tool[0]).name} --strip-unneeded")
            before, after, failed, done = strip_shared_objects(site, tool)
            report.strip = {
                "tool": Path(tool[0]).name,
                "before": before,
                "after": after,
                "stripped": done,
                "failed": failed,
            }
        else:
            progress("no strip tool for this architecture: .so files left as shipped")
            report.strip = {"tool": None, "reason": f"no strip for {arch} on this machine"}

    if pyc:
        progress(f"compiling .pyc with {python} (unchecked-hash{', sourceless' if edge else ''})")
        report.sources_removed_bytes = compile_pyc(python, site, sourceless=edge)

    progress(f"copying the model {folder.name} (CURRENT, {', '.join(MODEL_FILES)})")
    report.model_bytes = copy_model(root, folder, stage / LAYER_HOME)
    progress("encoding the category classifier's seed texts into the layer (saves ~0.8 s of cold start)")
    report.model_bytes += precompute_seed_vectors(stage / LAYER_HOME)

    progress("checking GLIBC versions the .so files need")
    report.elf = elf_requirements(site)

    progress(f"writing {zip_path.name}")
    write_zip(stage, zip_path)
    files = [(p.relative_to(stage).as_posix(), p.stat().st_size) for p in stage.rglob("*") if p.is_file()]
    report.unzipped_bytes = sum(n for _, n in files)
    report.python_bytes = tree_size(site)
    report.zipped_bytes = zip_path.stat().st_size
    report.biggest = sorted(files, key=lambda t: -t[1])[:10]
    report.zip_sha256 = hashlib.sha256(zip_path.read_bytes()).hexdigest()
    report.seconds = round(time.perf_counter() - started, 1)
    (out / f"{name}.json").write_text(json.dumps(report.__dict__, indent=2) + "\n")
    print_report(report)
    return report


def print_report(r: BuildReport) -> None:
    mb = 1e6
    log(f"\n{Path(r.zip_path).name}  ({r.seconds}s)")
    log(
        f"  unzipped {r.unzipped_bytes / mb:7.1f} MB   (python/ {r.python_bytes / mb:.1f} MB, "
        f"model {r.model_bytes / mb:.1f} MB)"
    )
    log(f"  zipped   {r.zipped_bytes / mb:7.1f} MB   sha256 {r.zip_sha256[:16]}")
    log("  kept:    " + ", ".join(r.kept_distributions))
    log("  dropped: " + ", ".join(d.split("==")[0] for d in r.dropped_distributions))
    log(f"  pruned {r.pruned_bytes / mb:.1f} MB of files (tests, tooling, unused libraries)")
    if r.strip.get("tool"):
        log(
            f"  stripped .so: {r.strip['before'] / mb:.1f} -> {r.strip['after'] / mb:.1f} MB"
            + (f" ({len(r.strip['failed'])} failed)" if r.strip["failed"] else "")
        )
    elf = r.elf
    if elf.get("checked"):
        m = elf["max"]
        log(
            "  ELF needs: "
            + ", ".join(f"{k}_{v['version']}" for k, v in m.items())
            + f"  -> glibc <= 2.{MANYLINUX_MAX}: {'yes' if elf['glibc_ok_2_28'] else 'NO'}"
        )
    log("  biggest files:")
    for path, size in r.biggest:
        log(f"    {size / mb:7.2f} MB  {path}")


# ----------------------------------------------------------------------------- cold start

PHASES = ("import", "model_load", "cache_init", "first_ops")
PROBE = r"""
import time
c0, t0 = time.process_time(), time.perf_counter()
import json, os, sys, sysconfig
import edgecache
from edgecache import CacheConfig, MemoryStore, SemanticCache
from edgecache.embedder import shared_embedder
HANDLER = os.environ.get("PROBE_HANDLER") == "1"
if HANDLER:
    import edgecache_functions.handler as handler_module
c1, t1 = time.process_time(), time.perf_counter()
embedder = shared_embedder(CacheConfig().projection)
c2, t2 = time.process_time(), time.perf_counter()
# The first SemanticCache of a process builds the shared category classifier: it embeds
# the default categories' seed texts once (edgecache.categories.shared_classifier).
cache = SemanticCache("cold-start", store=MemoryStore(), embedder=embedder)
c3, t3 = time.process_time(), time.perf_counter()
miss = cache.lookup("How do I reset my password?")
cache.insert("How do I reset my password?", "Open Settings > Security and use the reset link.")
hit = cache.lookup("how can I reset my password")
c4, t4 = time.process_time(), time.perf_counter()
health = None
if HANDLER:
    event = {"rawPath": "/health", "requestContext": {"http": {"method": "GET", "path": "/health"}}}
    health = handler_module.handle(event, None)["statusCode"]
root = os.path.realpath(os.environ["PROBE_ROOT"])
stdlib = {os.path.realpath(sysconfig.get_paths()[k]) for k in ("stdlib", "platstdlib")}
outside = sorted(
    name for name, mod in list(sys.modules.items())
    if getattr(mod, "__file__", None)
    and not os.path.realpath(mod.__file__).startswith(root + os.sep)
    and not any(os.path.realpath(mod.__file__).startswith(s + os.sep) for s in stdlib)
)
print("EDGECACHE_PROBE " + json.dumps({
    "import_ms": (t1 - t0) * 1e3, "model_load_ms": (t2 - t1) * 1e3, "cache_init_ms": (t3 - t2) * 1e3,
    "first_ops_ms": (t4 - t3) * 1e3, "total_ms": (t4 - t0) * 1e3,
    "import_cpu_ms": (c1 - c0) * 1e3, "model_load_cpu_ms": (c2 - c1) * 1e3,
    "cache_init_cpu_ms": (c3 - c2) * 1e3, "first_ops_cpu_ms": (c4 - c3) * 1e3,
    "total_cpu_ms": (c4 - c0) * 1e3,
    "miss_first": not miss.hit, "hit": bool(hit.hit), "similarity": getattr(hit, "similarity", None),
    "health": health, "outside_bundle": outside,
    "boto3_loaded": "boto3" in sys.modules, "torch_loaded": "torch" in sys.modules,
    "python": sys.version.split()[0], "encoder_file": edgecache.encoder.__file__,
    "model_dir": str(edgecache.encoder.current_model_dir()),
    "edgecache_pyc": os.path.basename(getattr(edgecache, "__cached__", "") or ""),
}))
"""


def run_probe(bundle: Path, python: str, handler: bool = True, timeout: float = 120) -> dict:
    """One fresh python3.12: -S (no site-packages at all), -B (no .pyc writes: /opt is
    read-only on Lambda), an empty environment except PYTHONPATH=<bundle>/python and
    EDGECACHE_HOME=<bundle>/edgecache-home. Returns the in-process phase times plus the
    whole process wall time (interpreter start to exit)."""
    bundle = Path(bundle).resolve()
    env = {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(bundle / LAYER_PYTHON),
        "EDGECACHE_HOME": str(bundle / LAYER_HOME),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PROBE_ROOT": str(bundle),
        "PROBE_HANDLER": "1" if handler else "0",
        "OMP_NUM_THREADS": "1",
    }
    started = time.perf_counter()
    res = subprocess.run(
        [python, "-S", "-B", "-c", PROBE],
        env=env,
        cwd=str(bundle),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    wall = (time.perf_counter() - started) * 1e3
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("EDGECACHE_PROBE ")), None)
    if res.returncode != 0 or line is None:
        raise RuntimeError(
            f"cold-start probe failed (rc {res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}"
        )
    out = json.loads(line.split(" ", 1)[1])
    out["process_ms"] = wall
    out["stderr"] = res.stderr.strip()[-2000:]
    return out


def unzip(zip_path: Path, dest: Path) -> Path:
    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            zf.extract(info, dest)
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                os.chmod(dest / info.filename, mode)
    return dest


def drop_pyc(tree: Path) -> None:
    for cache in sorted(tree.rglob("__pycache__")):
        shutil.rmtree(cache)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=sorted(ARCHES), default="x86_64")
    ap.add_argument("--out", type=Path, default=REPO / "build" / "layer")
    ap.add_argument("--variant", choices=VARIANTS, default="lambda")
    ap.add_argument(
        "--home", type=Path, help="EDGECACHE_HOME holding the built model (default: the usual one)"
    )
    ap.add_argument("--python", help="python3.12 used for .pyc and --check (default: found via pyenv/PATH)")
    ap.add_argument("--no-pyc", action="store_true", help="ship sources only")
    ap.add_argument("--no-strip", action="store_true", help="leave .so files as the wheels ship them")
    ap.add_argument(
        "--check", action="store_true", help="unzip and run the cold-start probe once (x86_64 only)"
    )
    args = ap.parse_args(argv)
    report = build(
        args.arch,
        args.out,
        args.variant,
        args.home,
        args.python,
        pyc=not args.no_pyc,
        strip=not args.no_strip,
    )
    if args.check:
        if os.uname().machine != ARCHES[args.arch]:
            log(f"--check skipped: a {args.arch} bundle cannot run on {os.uname().machine}")
            return 0
        python = args.python or find_python312()
        if not python:
            raise SystemExit("--check needs python3.12")
        with tempfile.TemporaryDirectory(prefix="edgecache-layer-check-") as tmp:
            bundle = unzip(Path(report.zip_path), Path(tmp))
            res = run_probe(bundle, python, handler=args.variant == "lambda")
        log(
            f"\ncold start ({res['python']}, bundle only): import {res['import_ms']:.0f} ms, model load "
            f"{res['model_load_ms']:.0f} ms, first SemanticCache (classifier seeds) "
            f"{res['cache_init_ms']:.0f} ms, "
            f"first lookup+insert+lookup {res['first_ops_ms']:.0f} ms, total "
            f"{res['total_ms']:.0f} ms (process {res['process_ms']:.0f} ms); hit={res['hit']}"
        )
        if not res["hit"] or res["outside_bundle"]:
            log(f"CHECK FAILED: hit={res['hit']} outside_bundle={res['outside_bundle']}")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
