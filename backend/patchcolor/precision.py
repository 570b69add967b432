"""Reduced-precision inference: which precision really runs on a device, and its autocast context.

Autocast in bf16/fp16 pays off only where the hardware computes in it: a CUDA GPU (NVIDIA, or AMD through ROCm:
bf16 where ``torch.cuda.is_bf16_supported()``, else fp16), an Apple GPU (MPS: fp16, which Apple GPUs run natively;
a bf16 request runs fp16 there), or a CPU whose oneDNN
kernels are native (AVX512-BF16 / AMX for bf16, AVX512-FP16 / AMX-FP16 for fp16). Elsewhere torch falls back
to reference kernels that are two orders of magnitude slower than fp32 (measured on an AVX2 EPYC: a 3×3
convolution at 0.3 GFLOP/s in bf16 against 133 GFLOP/s in fp32, see bench/bench_pipeline.py). A colorize job
then takes hours instead of seconds, so such a request runs in fp32 and says so, rather than hang.
"""
from __future__ import annotations

import contextlib
import logging
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .errors import BadOptions
from .winograd import winograd_enabled

log = logging.getLogger("patchcolor")

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _cpu_native(precision: str) -> bool:
    """Does oneDNN have native kernels for this precision on this CPU?"""
    probe = {"bf16": "_is_mkldnn_bf16_supported", "fp16": "_is_mkldnn_fp16_supported"}[precision]
    try:
        return bool(getattr(torch.ops.mkldnn, probe)())
    except (AttributeError, RuntimeError):   # private probe gone in some torch build: trust the request
        return True


# /proc/cpuinfo flags that give oneDNN native reduced-precision kernels (shown in the report, for the user)
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
_FP16_FLAGS = ("avx512_fp16", "amx_fp16")
CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class CpuReport:
    """What this CPU offers the networks; one line of it heads every benchmark figure and the service's ``info``.

    model:       the CPU's marketing name ("Intel(R) Xeon(R) Platinum 8488C", "AMD EPYC", ...).
    cores:       logical cores the OS reports.
    isa:         the widest vector ISA torch dispatches to ("AVX2", "AVX512", "DEFAULT" ...).
    native_bf16: oneDNN has native bf16 kernels here (AVX512-BF16 or AMX): ``--precision bf16`` is the fast choice.
    native_fp16: the same for fp16 (AVX512-FP16 / AMX-FP16).
    flags:       the bf16/fp16 CPU flags found in /proc/cpuinfo (empty where it does not exist).
    winograd:    fp32 3×3 convolutions on large maps run NNPACK's Winograd here (:mod:`patchcolor.winograd`).
    """

    model: str
    cores: int
    isa: str
    native_bf16: bool
    native_fp16: bool
    flags: tuple[str, ...]
    winograd: bool = False

    def line(self) -> str:
        """e.g. "CPU AMD EPYC, 2 cores, AVX2, bf16 emulated (slow), fp32 3×3 conv Winograd"."""
        bf16 = "bf16 native (fast)" if self.native_bf16 else "bf16 emulated (slow)"
        conv = "Winograd" if self.winograd else "oneDNN"
        return f"CPU {self.model}, {self.cores} cores, {self.isa}, {bf16}, fp32 3×3 conv {conv}"

    def to_dict(self) -> dict:
        return asdict(self)


def _mac_cpu_model() -> str:
    """``Apple M2`` etc. on macOS (``sysctl machdep.cpu.brand_string``), "" elsewhere or when it fails."""
    if platform.system() != "Darwin":
        return ""
    import subprocess

    try:
        r = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                           timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return r.stdout.strip()


def _cpu_model_and_flags() -> tuple[str, tuple[str, ...]]:
    """The CPU's name and its bf16/fp16 flags from /proc/cpuinfo (Linux); sysctl on macOS, platform.processor()
    elsewhere."""
    try:
        text = CPUINFO.read_text(errors="replace")
    except OSError:
        text = ""
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model Name", "cpu model") and not model:
            model = " ".join(value.split())
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    wanted = tuple(f for f in _BF16_FLAGS + _FP16_FLAGS if f in flags)
    return model or _mac_cpu_model() or platform.processor() or platform.machine() or "unknown CPU", wanted


def cpu_report() -> CpuReport:
    """CPU model, core count, torch's vector ISA and whether bf16/fp16 run natively (the probe autocast uses)."""
    model, flags = _cpu_model_and_flags()
    try:
        isa = str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):   # older torch builds
        isa = "unknown"
    return CpuReport(model, os.cpu_count() or 1, isa, _cpu_native("bf16"), _cpu_native("fp16"), flags,
                     winograd_enabled("cpu"))


def fast_precision(device: torch.device) -> str | None:
    """The reduced precision that is really faster on ``device`` ("bf16" or "fp16"), or None where only fp32 is.

    What the CLI help and the GIMP dialog (through the service's ``info``) offer as the "fast" choice; fp32 stays
    the default everywhere (it is the paper's arithmetic)."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "mps":
        return "fp16"
    return "bf16" if _cpu_native("bf16") else None


def effective_precision(device: torch.device, requested: str) -> tuple[str, str | None]:
    """The precision to run for ``requested`` ("fp32" | "bf16" | "fp16") on ``device``, and why it differs
    (None when it does not)."""
    if requested == "fp32":
        return "fp32", None
    if requested not in AUTOCAST_DTYPES:
        raise BadOptions(f"unknown precision {requested!r} (fp32, bf16, fp16)")
    if device.type == "cuda":
        if requested == "bf16" and not torch.cuda.is_bf16_supported():
            return "fp16", "this GPU has no bf16: running fp16"
        return requested, None
    if device.type == "mps":
        if requested == "bf16":
            return "fp16", "Apple GPUs run fp16 natively, not bf16: running fp16"
        return requested, None
    if _cpu_native(requested):
        return requested, None
    if requested == "fp16" and _cpu_native("bf16"):
        return "bf16", "this CPU has no native fp16 kernels: running bf16"
    return "fp32", (f"this CPU has no native {requested} kernels (they need AVX512-BF16/AMX or a GPU), and the "
                    f"emulated ones are ~100x slower than fp32: running fp32")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Nothing for "fp32"; ``torch.autocast`` in bf16/fp16 on the device's type otherwise."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in AUTOCAST_DTYPES:
        raise BadOptions(f"unknown precision {precision!r} (fp32, bf16, fp16)")
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[precision])


# ------------------------------------------------------------------------------------------------ fast choice
def resolve_fast(device: torch.device, remote: bool = False) -> tuple[str, str | None]:
    """``--precision fast`` -> (precision to run, one line to tell the user or None).

    bf16 (fp16 on a GPU without bf16, and on Apple GPUs) where it is native; fp32 elsewhere, with a line naming the
    CPU. For a remote
    job the server decides (it runs fp32 where bf16 is not native), so "bf16" is sent."""
    if remote:
        return "bf16", None
    fast = fast_precision(device)
    if fast is not None:
        return fast, None
    return "fp32", (f"--precision fast: {cpu_report().line()}; bf16 needs AVX512-BF16/AMX or a GPU to be faster, "
                    "so this runs fp32 (the default, the paper's arithmetic)")


def simulate_bf16(module: torch.nn.Module) -> None:
    """Round the weights, inputs and outputs of every conv/linear layer of ``module`` to bf16 in place (what CPU
    autocast feeds oneDNN and gets back) while the arithmetic stays fp32: bf16's effect on the output, measurable
    on CPUs where real bf16 kernels are emulated and ~100× slower. Accuracy only, not speed."""
    def to_bf16(t):
        return t.bfloat16().float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t

    for m in module.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)):
            m.weight.data = to_bf16(m.weight.data)
            m.register_forward_pre_hook(lambda mod, args: tuple(to_bf16(a) for a in args))
            m.register_forward_hook(lambda mod, args, out: to_bf16(out))


def modules_of(obj: object) -> list[torch.nn.Module]:
    """The torch modules a loaded model object holds (itself, or its attributes)."""
    if isinstance(obj, torch.nn.Module):
        return [obj]
    return [v for v in vars(obj).values() if isinstance(v, torch.nn.Module)]


@dataclass(frozen=True)
class PrecisionCheck:
    """bf16 (or fp16) against fp32 on one image.

    psnr_db:      PSNR of the reduced-precision output against the fp32 output (inf when identical), over the
                  image's value range (255 or 65535).
    n_ref/n_fast: detections in each; matched: pairs with IoU > 0.5 and the same class (greedy, best IoU first).
    seconds_*:    wall time of each run (simulated runs time fp32 kernels: not bf16's speed).
    """

    name: str
    psnr_db: float
    n_ref: int
    n_fast: int
    matched: int
    seconds_ref: float
    seconds_fast: float

    @property
    def agreement(self) -> float:
        """matched / max(n_ref, n_fast); 1.0 when neither found anything."""
        return self.matched / max(self.n_ref, self.n_fast) if max(self.n_ref, self.n_fast) else 1.0


def psnr(a, b) -> float:
    """PSNR in dB of two same-shape uint8/uint16 images (inf when equal)."""
    import numpy as np

    peak = 65535.0 if a.dtype == np.uint16 else 255.0
    mse = float(np.mean((a.astype(np.float32) - b.astype(np.float32)) ** 2))
    return float("inf") if mse == 0 else 10.0 * float(np.log10(peak * peak / mse))


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_detections(ref, fast, iou: float = 0.5) -> int:
    """How many instances pair up (box IoU > ``iou``, same class_id), greedily by best IoU, each used once."""
    pairs = sorted(((_iou(a.box, b.box), i, j) for i, a in enumerate(ref) for j, b in enumerate(fast)
                    if a.class_id == b.class_id), reverse=True)
    used_a, used_b, n = set(), set(), 0
    for v, i, j in pairs:
        if v > iou and i not in used_a and j not in used_b:
            used_a.add(i), used_b.add(j)
            n += 1
    return n


def compare_precision(name: str, ref_run, fast_run, src) -> PrecisionCheck:
    """Run ``src`` through ``ref_run`` (fp32) and ``fast_run`` (callables src -> Result) and compare."""
    import time

    t0 = time.perf_counter()
    r = ref_run(src)
    t1 = time.perf_counter()
    f = fast_run(src)
    t2 = time.perf_counter()
    return PrecisionCheck(name, psnr(r.image, f.image), len(r.instances), len(f.instances),
                          match_detections(r.instances, f.instances), t1 - t0, t2 - t1)
