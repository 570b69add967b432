"""``--device auto|cpu|cuda|mps``: resolution on faked CUDA / ROCm / MPS backends, the MPS fallback switch, the
precision each device runs, and that every operator the pipeline runs has an MPS kernel."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from patchcolor import device as D
from patchcolor import precision
from patchcolor.errors import DeviceUnavailable

ROOT = Path(__file__).resolve().parents[1]


def fake_backends(monkeypatch: pytest.MonkeyPatch, *, cuda: bool = False, mps: bool = False,
                  hip: str | None = None, name: str = "NVIDIA H100 80GB HBM3", count: int = 1) -> None:
    """Make this CPU-only torch believe it has a CUDA (or, with ``hip``, ROCm) GPU and/or an Apple GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count if cuda else 0)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: name)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    monkeypatch.setattr(torch.version, "hip", hip)


@pytest.mark.parametrize("cuda, mps, want", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu"),
                                             (True, False, "cuda")])
def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch: pytest.MonkeyPatch, cuda: bool, mps: bool,
                                             want: str) -> None:
    fake_backends(monkeypatch, cuda=cuda, mps=mps)
    assert D.resolve_device("auto") == torch.device(want)


def test_amd_gpu_through_rocm_is_a_cuda_device_and_says_rocm(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_backends(monkeypatch, cuda=True, hip="7.0.51831", name="AMD Instinct MI300X")
    dev = D.resolve_device("auto")
    assert dev == torch.device("cuda") and D.backend_name(dev) == "ROCm 7.0.51831"
    assert D.device_line(dev) == "GPU AMD Instinct MI300X (cuda:0, ROCm 7.0.51831)"
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert D.device_line(D.resolve_device("cuda")) == "GPU AMD Instinct MI300X (cuda:0, CUDA 13.0)"


def test_devices_that_are_not_there_give_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_backends(monkeypatch, cuda=True, count=1)
    assert D.resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(DeviceUnavailable, match=r"has 1 CUDA GPU\(s\)"):
        D.resolve_device("cuda:3")
    fake_backends(monkeypatch)
    for name, words in (("mps", "MPS is not available"), ("cuda", "sees none"), ("tpu", "Unknown device 'tpu'")):
        with pytest.raises(DeviceUnavailable) as ei:
            D.resolve_device(name)
        assert words in ei.value.message and ei.value.message.count(". ") == 0 and "\n" not in ei.value.message


def test_pipeline_takes_mps_and_mps_precision_is_fp16(monkeypatch: pytest.MonkeyPatch, models_dir: Path) -> None:
    from patchcolor.pipeline import Pipeline

    fake_backends(monkeypatch, mps=True)
    mps = torch.device("mps")
    assert Pipeline(models_dir, device="auto").device == mps == Pipeline(models_dir, device="mps").device
    assert precision.fast_precision(mps) == "fp16"
    assert precision.effective_precision(mps, "bf16") == ("fp16", "Apple GPUs run fp16 natively, not bf16: "
                                                                  "running fp16")
    assert precision.effective_precision(mps, "fp16") == ("fp16", None)
    assert precision.resolve_fast(mps) == ("fp16", None)


def test_cli_device_choices(tmp_path: Path) -> None:
    """``--device mps`` where there is none: one sentence, exit 1; an unknown device: argparse's usage error."""
    from PIL import Image

    Image.fromarray(np.full((32, 32), 128, np.uint8)).save(tmp_path / "g.png")
    run = [sys.executable, "-m", "patchcolor.cli", "colorize", str(tmp_path / "g.png"), "-o", str(tmp_path / "o"),
           "--detector", "none"]
    p = subprocess.run(run + ["--device", "mps"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and "MPS is not available" in p.stderr and "Traceback" not in p.stderr, p.stderr
    p = subprocess.run(run + ["--device", "tpu"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "Unknown device 'tpu'" in p.stderr, p.stderr
    assert D.DEVICES == ("auto", "cpu", "cuda", "mps") and set(D.DEVICE_LABELS) == set(D.DEVICES)


def test_mps_fallback_is_set_on_macos_only_and_before_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(D.MPS_FALLBACK_ENV, raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    assert D.enable_mps_fallback() is False and D.MPS_FALLBACK_ENV not in os.environ
    monkeypatch.setattr(sys, "platform", "darwin")
    assert D.enable_mps_fallback() is True and os.environ[D.MPS_FALLBACK_ENV] == "1"
    monkeypatch.setenv(D.MPS_FALLBACK_ENV, "0")                # the user's choice stands
    assert D.enable_mps_fallback() is False and os.environ[D.MPS_FALLBACK_ENV] == "0"
    # importing the package sets it before anything has imported torch (torch reads it once, at import)
    code = ("import os, sys; sys.platform = 'darwin'; import patchcolor; "
            f"print(os.environ.get({D.MPS_FALLBACK_ENV!r}), 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != D.MPS_FALLBACK_ENV}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.split() == ["1", "False"], out.stdout + out.stderr


# ----------------------------------------------------------------------------------------------- MPS coverage
# torchvision's own MPS kernels (pytorch/vision#7643, in every torchvision since 0.16)
TORCHVISION_MPS_OPS = {"nms", "roi_align", "roi_pool", "ps_roi_align", "ps_roi_pool"}
GENERIC_KEYS = {"CompositeImplicitAutograd", "CompositeExplicitAutograd", "CompositeExplicitAutogradNonFunctional"}


def _mps_kernel_table() -> dict[str, bool]:
    """{``aten::name.overload``: has an MPS kernel or a device-generic one}, from torch's own
    native_functions.yaml (shipped in torchgen), following ``structured_delegate``."""
    yaml = pytest.importorskip("yaml")
    torchgen = pytest.importorskip("torchgen")
    path = Path(torchgen.__file__).parent / "packaged" / "ATen" / "native" / "native_functions.yaml"
    if not path.is_file():
        pytest.skip("this torch ships no native_functions.yaml")
    entries = {}
    for f in yaml.safe_load(path.read_text()):
        keys = {k.strip() for ks in (f.get("dispatch") or {}) for k in ks.split(",")}
        entries[f["func"].split("(")[0]] = (keys, f.get("structured_delegate"))

    def ok(name: str) -> bool:
        keys, delegate = entries[name]
        if "MPS" in keys or keys & GENERIC_KEYS or (not keys and not delegate):
            return True
        return bool(delegate) and ok(delegate)

    return {f"aten::{n}": ok(n) for n in entries}


def test_every_operator_the_pipeline_runs_has_an_mps_kernel(models_dir: Path) -> None:
    """Trace what the detector, both colorizers (hints included) and the pipeline dispatch, and look each operator
    up in torch's kernel table: an operator without an MPS kernel would run on the CPU (fallback) or fail. Also no
    float64 tensor may reach a network device (MPS has no float64)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from patchcolor import winograd
    from patchcolor.options import make_options
    from patchcolor.pipeline import Pipeline
    from skimage import data
    from skimage.color import rgb2gray
    from skimage.util import img_as_ubyte

    seen: dict[str, set[str]] = {}

    class Trace(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            out = func(*args, **(kwargs or {}))
            dtypes = {t.dtype for t in torch.utils._pytree.tree_leaves((args, kwargs, out))
                      if isinstance(t, torch.Tensor)}
            seen.setdefault(func.name(), set()).update(str(d) for d in dtypes)
            return out

    from PIL import Image

    try:
        from patchcolor.io import from_pil
    except ImportError:                                           # before image I/O had its own module
        from patchcolor.prepare import from_pil

    gray = img_as_ubyte(rgb2gray(data.astronaut()))[::4, ::4]
    src = from_pil(Image.fromarray(gray))
    pipe = Pipeline(models_dir, device="cpu")
    hints = np.zeros(gray.shape + (4,), np.uint8)                   # one red dab (transparent elsewhere)
    hints[40:44, 60:64] = (200, 40, 40, 255)
    runs = [(make_options("default", max_instances=3), {}),
            (make_options("default", colorizer="siggraph17", max_instances=3),
             {"hints": from_pil(Image.fromarray(hints, "RGBA"))})]
    with winograd.policy_override(False):                        # as on a GPU: Winograd is a CPU-only path
        for name in ("eccv16", "siggraph17"):                     # models loaded outside the trace
            pipe.colorizer(name)
        pipe.detector("r101")
    for opts, kw in runs:
        with Trace():
            pipe.run(src, opts, **kw)
    ran = {op.split(".")[0] for op in seen}
    assert {"aten::conv2d", "aten::conv_transpose2d", "torchvision::roi_align", "torchvision::nms"} <= ran, sorted(ran)
    table = _mps_kernel_table()
    assert table["aten::conv2d"] and not table["aten::mkldnn_max_pool2d"]   # the table tells them apart
    missing = sorted(op for op in seen if op.startswith("aten::") and not table.get(op, False))
    vision = sorted(op for op in seen if op.startswith("torchvision::") and op.split("::")[1] not in
                    TORCHVISION_MPS_OPS)
    assert missing == [] and vision == [], f"no MPS kernel: {missing + vision}"
    f64 = sorted(op for op, dts in seen.items() if "torch.float64" in dts)
    assert f64 == [], f"float64 tensors (MPS has none) in: {f64}"
