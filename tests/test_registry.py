"""The one model registry (patchcolor.registry): typed catalogue, every reader of model names, loader messages."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from patchcolor import models as pm
from patchcolor import registry as R
from patchcolor.errors import BadOptions, WeightsCorrupt, WeightsMissing

ROOT = Path(__file__).resolve().parents[1]
_NAME_HASH = re.compile(r"[-_]([0-9a-f]{6,64})\.[A-Za-z0-9]+$")


def hash_suffix_from_name(file_name: str) -> str | None:
    """The hex hash carried by an official file name (torch.hub ``name-<sha256 prefix>.pth``, Detectron2
    ``model_final_<6 hex>.pkl``)."""
    m = _NAME_HASH.search(file_name)
    return m.group(1) if m else None


def is_hex(s: str) -> bool:
    return bool(re.fullmatch(r"[0-9a-f]+", s))


# ----------------------------------------------------------------------------------------------- catalogue
def test_catalog_is_typed_well_formed_and_shipped_in_the_package() -> None:
    raw = json.loads(R.PACKAGE_CATALOG.read_text())
    assert R.PACKAGE_CATALOG.parent == Path(R.__file__).resolve().parent
    assert raw["schema"] == 2 and not (ROOT / "models" / "catalog.json").exists()   # one copy, in the package
    files = raw["files"]
    assert len({f["id"] for f in files}) == len({f["file"] for f in files}) == len(files)
    for f in files:
        hp = f["hash_prefix"]
        assert f["url"].startswith("https://") and f["url"].rsplit("/", 1)[1] == f["file"], f["id"]
        if hp is None:                             # the name carries no hash (DDColor): pinned on first download
            assert hash_suffix_from_name(f["file"]) is None and f["on_prefix_mismatch"] == "reject", f["id"]
            continue
        assert isinstance(hp, dict) and set(hp) == {"hex", "algorithms", "confirmed"}, f["id"]   # no "a|b (x)"
        assert hash_suffix_from_name(f["file"]) == hp["hex"] and is_hex(hp["hex"]), f["id"]
        assert f["sha256"] is None or (len(f["sha256"]) == 64 and is_hex(f["sha256"]))
        if f["size"] is None:                      # unknown sizes must say so honestly, with an estimate
            assert isinstance(f["approx_size"], int) and f["approx_size"] > 1_000_000
        if f["on_prefix_mismatch"] == "warn":      # only allowed where the algorithm is a guess
            assert not hp["confirmed"]
    reg = R.registry()
    assert [f.id for f in reg.files if f.required] == ["eccv16", "r101"]
    assert {f.id for f in reg.files if not f.required} == {"siggraph17", "torchvision-v2", "ddcolor_modelscope",
                                                           "ddcolor_artistic", "ddcolor_paper", "ddcolor_paper_tiny"}
    for fid in ("eccv16", "siggraph17", "torchvision-v2"):
        hp = reg.file(fid).hash_prefix
        assert hp == R.HashPrefix(hp.hex, ("sha256",), True) and len(hp.hex) == 8
    assert reg.file("r101").hash_prefix.algorithms == ("sha256", "md5") and not reg.file("r101").hash_prefix.confirmed


def test_registry_names_kinds_files_and_builders() -> None:
    reg = R.registry()
    assert reg.names("colorizer") == ("eccv16", "siggraph17", "ddcolor", "ddcolor-artistic", "ddcolor-paper",
                                      "ddcolor-tiny")
    assert reg.choices("detector") == ("r101", "torchvision-v2", "detectron2", "none")
    assert reg.file("detectron2") is reg.file("r101") and reg.file("detectron2").file == "model_final_a3ec72.pkl"
    assert {m.name for m in reg.users("r101")} == {"r101", "detectron2"}
    assert reg.model("detectron2").requires == "detectron2" and reg.model("detectron2").optional
    from patchcolor.colorizers import ARCHITECTURES
    from patchcolor.colorizers.eccv16 import ECCVGenerator
    from patchcolor.colorizers.siggraph17 import SIGGRAPHGenerator

    from patchcolor.colorizers.ddcolor import DDColorColorizer

    assert ARCHITECTURES == {"eccv16": ECCVGenerator, "siggraph17": SIGGRAPHGenerator,   # built from the registry
                             **{n: DDColorColorizer for n in ("ddcolor", "ddcolor-artistic", "ddcolor-paper",
                                                              "ddcolor-tiny")}}
    from patchcolor.segment.r101 import R101Detector

    assert reg.model("r101", "detector").build_target() is R101Detector
    with pytest.raises(BadOptions, match="choose one of eccv16, siggraph17"):
        reg.model("r101", "colorizer")
    with pytest.raises(KeyError):
        reg.file("nope")


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["files"][0].update(hash_prefix="9b330a0b"), "must be an object"),
    (lambda d: d["files"][0]["hash_prefix"].update(algorithms=["sha256", "md5"]), "exactly one algorithm"),
    (lambda d: d["files"][0]["hash_prefix"].update(algorithms=["crc32"]), "must be among"),
    (lambda d: d["files"][0].update(on_prefix_mismatch="warn"), "needs an unconfirmed"),
    (lambda d: d["files"][0].update(hash_prefix_algorithm="sha256"), "unknown key"),
    (lambda d: d["models"][0].update(kind="upscaler"), "kind must be"),
    (lambda d: d["models"][0].update(file="nope"), "unknown file id"),
    (lambda d: d["models"][0].update(builder="os:system"), "builder must be"),
    (lambda d: d["models"].append(dict(d["models"][0])), "used twice"),
    (lambda d: d.update(schema=1), "schema"),
])
def test_a_malformed_catalogue_is_refused_with_a_reason(mutate: Any, message: str) -> None:
    data = json.loads(R.PACKAGE_CATALOG.read_text())
    mutate(data)
    with pytest.raises(ValueError, match=message):
        R.parse_registry(data, "test")


def test_env_catalogue_and_models_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = json.loads(R.PACKAGE_CATALOG.read_text())
    data["models"] = [m for m in data["models"] if m["name"] != "detectron2"]
    cat = tmp_path / "cat.json"
    cat.write_text(json.dumps(data))
    monkeypatch.setenv("PATCHCOLOR_CATALOG", str(cat))
    assert R.registry().choices("detector") == ("r101", "torchvision-v2", "none")
    monkeypatch.setenv("PATCHCOLOR_MODELS", str(tmp_path / "m"))
    assert R.models_dir() == tmp_path / "m"
    monkeypatch.delenv("PATCHCOLOR_MODELS")
    assert R.models_dir() == ROOT / "models"
    monkeypatch.setattr(R, "source_root", lambda: None)           # an installed wheel: no checkout
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert R.models_dir() == tmp_path / "data" / "patchcolor" / "models"


# ----------------------------------------------------------------------------------------------- readers
def test_every_reader_of_model_names_follows_the_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Options, the CLI's choices and the service's info read the registry: a name added to the catalogue
    appears in each of them, a name removed disappears."""
    data = json.loads(R.PACKAGE_CATALOG.read_text())
    data["models"] = [m for m in data["models"] if m["name"] != "torchvision-v2" and "ddcolor" not in m["name"]]
    data["models"].append({"name": "eccv16-copy", "kind": "colorizer", "file": "eccv16", "optional": True,
                           "label": "Copy", "builder": "patchcolor.colorizers.eccv16:ECCVGenerator"})
    cat = tmp_path / "cat.json"
    cat.write_text(json.dumps(data))
    monkeypatch.setenv("PATCHCOLOR_CATALOG", str(cat))

    from patchcolor.cli import build_parser
    from patchcolor.options import make_options

    assert make_options(colorizer="eccv16-copy").colorizer == "eccv16-copy"
    with pytest.raises(ValueError, match="torchvision-v2"):
        make_options(detector="torchvision-v2")
    actions = {a.dest: a for sp in build_parser()._subparsers._group_actions       # type: ignore[union-attr]
               for a in sp.choices["colorize"]._actions}
    assert list(actions["colorizer"].choices) == ["eccv16", "siggraph17", "eccv16-copy"]
    assert list(actions["detector"].choices) == ["r101", "detectron2", "none"]
    info = pm.weights_status(tmp_path)
    assert list(info["colorizers"]) == ["eccv16", "siggraph17", "eccv16-copy"]
    assert list(info["detectors"]) == ["r101", "detectron2", "none"]
    assert {m["name"]: m["label"] for m in info["models"]}["eccv16-copy"] == "Copy"
    import importlib.util

    if importlib.util.find_spec("detectron2") is None:              # the library is not installed here
        assert info["detectors"]["detectron2"] == "unavailable" and info["detectors"]["r101"] == "missing"


# ----------------------------------------------------------------------------------------------- messages
def test_missing_message_names_optional_and_models_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PATCHCOLOR_MODELS", raising=False)
    with pytest.raises(WeightsMissing) as ei:
        pm.weight_path("torchvision-v2", tmp_path)
    msg, prog = ei.value.message, R.command_name()
    assert msg == (f"The torchvision-v2 detector weights are missing: run `{prog} weights fetch torchvision-v2 "
                   f"--models-dir {tmp_path}`.")
    details = ei.value.details                                    # for the log
    assert "maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth" in details and "https://download.pytorch.org/" in details
    monkeypatch.setenv("PATCHCOLOR_MODELS", str(tmp_path))        # the default folder: no --models-dir
    msg = R.missing_error("eccv16", tmp_path).message
    assert msg == f"The eccv16 colorizer weights are missing: run `{prog} weights fetch`."
    assert f"`{prog} weights fetch siggraph17`" in R.missing_error("siggraph17", tmp_path).message


def test_corrupt_message_hides_torch_advice_and_names_the_command(tmp_path: Path) -> None:
    err = R.corrupt_error("siggraph17", tmp_path / "siggraph17-df00044c.pth",
                          "Weights only load failed. In PyTorch 2.6, we changed the default value of the "
                          "`weights_only` argument ... set `weights_only=False`\nmore")
    assert isinstance(err, WeightsCorrupt) and err.code == "weights_corrupt"
    assert "weights_only" not in err.message + err.details and "refused for safety" in err.details
    assert str(tmp_path / "siggraph17-df00044c.pth") in err.message
    assert f"`{R.command_name()} weights fetch siggraph17 --models-dir {tmp_path}`" in err.message
    assert "\n" not in err.message


def _loader_error(kind: str, name: str, folder: Path) -> Any:
    import torch

    with pytest.raises((WeightsMissing, WeightsCorrupt)) as ei:
        if kind == "colorizer":
            from patchcolor.colorizers import load_colorizer

            load_colorizer(name, folder / R.registry().file(name).file, torch.device("cpu"))
        else:
            from patchcolor.segment import load_detector

            load_detector(name, folder, torch.device("cpu"))
    return ei.value


@pytest.mark.parametrize("kind, name", [("colorizer", "eccv16"), ("colorizer", "siggraph17"),
                                        ("detector", "r101"), ("detector", "torchvision-v2")])
def test_every_loader_message_comes_from_the_registry(tmp_path: Path, kind: str, name: str) -> None:
    """Missing and corrupt (garbage, a pickled object, a state_dict of the wrong network) files: each loader says
    it in the registry's words with the right command (``--optional`` only for optional models)."""
    import pickle

    import torch

    wf = R.registry().file(name)
    optional = f" {name}" if not wf.required else ""
    want_cmd = f"`{R.command_name()} weights fetch{optional} --models-dir {tmp_path}`"
    err = _loader_error(kind, name, tmp_path)
    assert err.message == f"The {name} {kind} weights are missing: run {want_cmd}.", err.message
    assert f"{wf.file} is not in {tmp_path}" in err.details
    path = tmp_path / wf.file
    for content in (b"garbage" * 100, pickle.dumps({"x": ValueError("boom")}, protocol=2)):
        path.write_bytes(content)
        err = _loader_error(kind, name, tmp_path)
        assert err.message == (f"The {name} {kind} weights file {path} is damaged or not the official file: delete "
                               f"it and run {want_cmd}."), err.message
        assert err.details and "weights_only" not in err.details and "\n" not in err.details, err.details
        assert wf.file not in err.details, err.details             # named once, not again in the reason
    if path.suffix == ".pth":
        torch.save({"conv.weight": torch.zeros(1)}, path)
        err = _loader_error(kind, name, tmp_path)
        assert err.message.startswith(f"The {name} {kind} weights file {path} is damaged") and want_cmd in err.message


def test_patchcolor_weights_reads_the_same_registry() -> None:
    """``patchcolor weights list`` (what install.py runs for the weights) lists exactly the registry's files, in
    catalogue order, and ``fetch --optional`` names the optional models."""
    out = subprocess.run([sys.executable, "-m", "patchcolor.cli", "weights", "list"], check=True,
                         capture_output=True, text=True, timeout=60).stdout
    rows = [line.split()[:2] for line in out.splitlines()[2:]]
    assert rows == [[f.id, "required" if f.required else "optional"] for f in R.registry().files]
    help_text = subprocess.run([sys.executable, "-m", "patchcolor.cli", "weights", "fetch", "--help"], check=True,
                               capture_output=True, text=True, timeout=60).stdout
    optional = ", ".join(m.name for m in R.registry().models if not m.weights.required)
    assert f"optional models' files ({optional})" in " ".join(help_text.split())


# ----------------------------------------------------------------------------------------------- small items
def test_validate_checks_every_choice_field_including_order() -> None:
    from dataclasses import replace

    from patchcolor.options import DEFAULT, make_options, validate

    assert make_options(order="score").order == "score"
    for field_name, bad in (("order", "random"), ("preset", "fast"), ("colorizer", "nope"), ("detector", "yolo")):
        with pytest.raises(ValueError, match=field_name):
            validate(replace(DEFAULT, **{field_name: bad}))


def test_pixel_format_tables_are_checked_even_under_python_O() -> None:
    """The two pixel-format tables (client stdlib / prepare.py numpy) are compared by a real check, not an
    ``assert`` that ``python -O`` strips."""
    import numpy as np
    from patchcolor.service import protocol as P

    P.check_pixel_tables()
    with pytest.raises(RuntimeError, match="disagree"):
        P.check_pixel_tables(wire_table={**P.PIXEL_FORMATS, "gray8": (1, 2)})
    code = ("import numpy as np, patchcolor.prepare as p; "
            "p.PIXEL_FORMATS = dict(p.PIXEL_FORMATS, gray8=(1, np.dtype(np.uint16))); "
            "import patchcolor.service.protocol")
    r = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "pixel format tables disagree" in r.stderr, r.stderr
    assert np.dtype(np.uint16).itemsize == 2


def test_no_dead_stage_list_in_the_pipeline() -> None:
    """The stage names live in the protocol (progress messages); pipeline.STAGES was an unused second copy."""
    import patchcolor.pipeline as pipeline
    from patchcolor.service import protocol as P

    assert not hasattr(pipeline, "STAGES") and P.STAGES == ("prepare", "segment", "colorize", "fuse", "finish")
