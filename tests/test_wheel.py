"""The package as a user installs it: ``pip wheel`` -> a fresh venv -> ``patchcolor colorize`` with test weights.

The wheel is built from a copy of the sources (the checkout is left untouched) with ``--no-deps
--no-build-isolation`` (offline), and installed with ``--no-deps`` into a new venv whose only extra path is
this interpreter's site-packages (torch & co., read through a ``.pth`` line: ``.pth`` files *there*, such as
the editable install's finder, are not processed, so ``patchcolor`` can only come from the wheel).
Marked ``wheel`` (about 30 s): ``-m "not wheel"`` deselects it.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import threading
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.wheel

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "backend/patchcolor", "gimp_plugin/patchcolor_client")


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert p.returncode == 0, f"{' '.join(cmd)} -> {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p.stdout + p.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for rel in SOURCES:
        s, d = ROOT / rel, src / rel
        if s.is_dir():
            shutil.copytree(s, d, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            d.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(s, d)
    dist = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "--disable-pip-version-check", "-w", str(dist), str(src)], cwd=src)
    (whl,) = dist.glob("patchcolor-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    env_dir = tmp_path_factory.mktemp("venv") / "v"
    _run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], cwd=env_dir.parent)
    py = env_dir / "bin" / "python"
    purelib = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        cwd=env_dir).strip())
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (purelib / "zz_patchcolor_test_deps.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))
    _run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "--disable-pip-version-check",
          str(wheel)], cwd=env_dir)
    return env_dir


def _clean_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PATCHCOLOR_", "PYTHON"))}
    env.update(HOME=str(home), XDG_DATA_HOME=str(home / "data"), **extra)
    return env


def test_wheel_ships_the_model_registry_and_declares_ranges(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        catalog = json.loads(z.read("patchcolor/catalog.json"))
    assert catalog["schema"] == 2 and {m["name"] for m in catalog["models"]} >= {"eccv16", "r101"}
    assert "patchcolor_client/__init__.py" in names and "patchcolor/segment/d2_pickle.py" in names
    for pkg in (ROOT / "backend").rglob("__init__.py"):                # every sub-package of the source ships
        assert pkg.relative_to(ROOT / "backend").as_posix() in names, f"{pkg.parent.name} missing from the wheel"
    requires = [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    core = [r for r in requires if "extra ==" not in r]
    assert any(r.startswith("numpy") and ">=2" in r for r in core), core
    assert not [r for r in core if "==" in r], f"exact pins belong in constraints.txt: {core}"


def test_constraints_pin_every_dependency_within_its_range() -> None:
    """constraints.txt (used by install.py) holds one exact version for each declared dependency."""
    tomllib = pytest.importorskip("tomllib")                     # Python >= 3.11
    Requirement = pytest.importorskip("packaging.requirements").Requirement

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    for dep in map(Requirement, deps):
        key = dep.name.lower().replace("_", "-")
        assert key in pins, f"{dep.name} has no exact version in constraints.txt"
        assert dep.specifier.contains(pins[key], prereleases=True), f"{dep.name}=={pins[key]} is outside {dep}"


def test_installed_wheel_runs_colorize(venv: Path, models_dir: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = _clean_env(home)
    where = _run([str(venv / "bin" / "python"), "-c", "import patchcolor, patchcolor.registry as r; "
                  "print(patchcolor.__file__); print(r.PACKAGE_CATALOG.is_file(), r.source_root())"],
                 cwd=tmp_path, env=env).split()
    assert Path(where[0]).is_relative_to(venv) and where[1:] == ["True", "None"], where   # from the wheel

    exe = str(venv / "bin" / "patchcolor")
    out = _run([exe, "colorize", "--help"], cwd=tmp_path, env=env)
    assert "siggraph17" in out and "torchvision-v2" in out            # choices from the shipped registry

    gray = (np.add.outer(np.arange(96), np.arange(128)) % 256).astype(np.uint8)
    (tmp_path / "in").mkdir()
    Image.fromarray(gray).save(tmp_path / "in" / "photo.png")
    _run([exe, "colorize", str(tmp_path / "in" / "photo.png"), "-o", str(tmp_path / "out"), "--models", str(models_dir),
          "--device", "cpu", "--max-side", "128", "--detector", "none"], cwd=tmp_path, env=env)   # detector: in test_cli
    img = np.asarray(Image.open(tmp_path / "out" / "photo.png"))
    assert img.shape == (96, 128, 3) and img.dtype == np.uint8

    # no weights: one sentence naming the command that fetches them (no install.py, no checkout), no traceback
    p = subprocess.run([exe, "colorize", str(tmp_path / "in" / "photo.png"), "-o", str(tmp_path / "out2"),
                        "--device", "cpu"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr
    assert "weights are missing: run `" in p.stderr and f"{exe} weights fetch`." in p.stderr, p.stderr
    assert "install.py" not in p.stderr and "source folder" not in p.stderr, p.stderr


def test_install_py_installs_with_the_constraints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """install.py's pip step passes ``-c constraints.txt``, and a changed constraints file re-runs pip."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("patchcolor_install_for_wheel_test", ROOT / "install.py")
    assert spec and spec.loader
    inst = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = inst
    spec.loader.exec_module(inst)
    calls: list[list[str]] = []

    def fake_run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        calls.append([str(c) for c in cmd])
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(inst.subprocess, "run", fake_run)
    inst.pip_install(tmp_path / "python", reinstall=True)
    (cmd,) = calls
    assert cmd[-2:] == ["-c", str(ROOT / "constraints.txt")] and "-e" in cmd and "--upgrade" not in cmd
    before = inst._pyproject_hash()
    monkeypatch.setattr(inst, "CONSTRAINTS", tmp_path / "other.txt")
    (tmp_path / "other.txt").write_text("numpy==2.0.0\n")
    assert inst._pyproject_hash() != before


def _weight_bytes(n: int, seed: int) -> bytes:
    """Bytes framed like a torch zip checkpoint (no real weights)."""
    body = hashlib.sha256(str(seed).encode()).digest() * (n // 32)
    return b"PK\x03\x04" + body + b"PK\x05\x06" + b"\0" * 18


def test_installed_wheel_lists_fetches_and_verifies_weights(venv: Path, tmp_path: Path) -> None:
    """``patchcolor weights list|fetch|verify`` from the wheel: a download from a loopback HTTP server and a copy
    ``--from`` a folder, both verified against the catalogue's hash prefix and pinned."""
    served, offline = tmp_path / "served", tmp_path / "offline"
    served.mkdir()
    offline.mkdir()
    files, models = [], []
    for i, (fid, folder) in enumerate((("net", served), ("extra", offline))):
        data = _weight_bytes(200_000 + i, seed=i)
        name = f"{fid}-{hashlib.sha256(data).hexdigest()[:8]}.pth"
        (folder / name).write_bytes(data)
        files.append({"id": fid, "file": name, "url": "", "hash_prefix": {
            "hex": name[-12:-4], "algorithms": ["sha256"], "confirmed": True}})
        models.append({"name": fid, "kind": "colorizer", "file": fid, "optional": fid == "extra", "label": fid,
                       "builder": "patchcolor.colorizers.eccv16:ECCVGenerator"})
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(SimpleHTTPRequestHandler, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for f in files:
            f["url"] = f"http://127.0.0.1:{server.server_address[1]}/{f['file']}"
        catalog = tmp_path / "catalog.json"
        catalog.write_text(json.dumps({"schema": 2, "files": files, "models": models}))
        home = tmp_path / "home"
        env = _clean_env(home, PATCHCOLOR_CATALOG=str(catalog))
        exe = str(venv / "bin" / "patchcolor")
        default = home / "data" / "patchcolor" / "models"             # a wheel's default folder
        out = _run([exe, "weights", "list"], cwd=tmp_path, env=env)
        assert str(default) in out and "net" in out and "missing" in out, out
        out = _run([exe, "weights", "fetch", "--quiet"], cwd=tmp_path, env=env)   # required files only
        assert (default / files[0]["file"]).read_bytes() == (served / files[0]["file"]).read_bytes(), out
        assert not (default / files[1]["file"]).exists()
        out = _run([exe, "weights", "fetch", "extra", "--from", str(offline)], cwd=tmp_path, env=env)
        assert (default / files[1]["file"]).read_bytes() == (offline / files[1]["file"]).read_bytes(), out
        out = _run([exe, "weights", "verify", "--optional"], cwd=tmp_path, env=env)
        pins = json.loads((default / "verified.json").read_text())["files"]
        assert set(pins) == {f["file"] for f in files} and out.count(" ok ") == 2, out
    finally:
        server.shutdown()
        server.server_close()
