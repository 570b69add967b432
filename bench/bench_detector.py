"""Benchmark the r101 detector on this machine: prints figures, asserts nothing.

Builds a random (class-biased, so it finds ~100 instances) Detectron2 R101-FPN checkpoint in a temp
dir, then for fp32 (channels_last on/off, runs interleaved) and bf16:
  * detect() wall time on a 1280x960 grey image (warm, median of --runs),
  * FLOPs of one detect() (torch.utils.flop_counter.FlopCounterMode: convs / matmuls only),
  * achieved GFLOP/s vs this machine's own 2048² matmul rate in the same dtype,
  * where the time goes: network modules, ROIAlign poolers, and everything else (resize,
    normalization/padding, anchors, box decode, NMS, mask paste).

Usage: .venv/bin/python bench/bench_detector.py [--runs 3] [--size 1280x960] [--bf16-min-size 320]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fake_r101 import write_r101_pkl  # noqa: E402
from patchcolor.segment.base import DetectorSettings  # noqa: E402
from patchcolor.segment.r101 import R101Detector  # noqa: E402

NETWORK = ("backbone", "rpn.head", "roi_heads.box_head", "roi_heads.box_predictor", "roi_heads.mask_head",
           "roi_heads.mask_predictor")
POOLERS = ("roi_heads.box_roi_pool", "roi_heads.mask_roi_pool")


def matmul_rate(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """GFLOP/s of torch's own n x n matmul in ``dtype`` (warm)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e9


class ModuleTimer:
    """Wall time spent inside the named (non-nested) submodules, via forward pre/post hooks."""

    def __init__(self, model: torch.nn.Module, names: tuple[str, ...]) -> None:
        self.total: dict[str, float] = defaultdict(float)
        self._start: dict[str, float] = {}
        for name in names:
            m = model.get_submodule(name)
            m.register_forward_pre_hook(lambda mod, args, n=name: self._start.__setitem__(n, time.perf_counter()))
            m.register_forward_hook(lambda mod, args, out, n=name: self._stop(n))

    def _stop(self, name: str) -> None:
        self.total[name] += time.perf_counter() - self._start[name]

    def reset(self) -> None:
        self.total.clear()


def run_once(det: R101Detector, img: np.ndarray, settings: DetectorSettings, timer: ModuleTimer
             ) -> tuple[float, dict[str, float], int]:
    timer.reset()
    t = time.perf_counter()
    found = det.detect(img, settings)
    return time.perf_counter() - t, dict(timer.total), len(found)


def count_flops(det: R101Detector, img: np.ndarray, settings: DetectorSettings) -> float:
    with FlopCounterMode(display=False) as fc:
        det.detect(img, settings)
    return float(fc.get_total_flops())


def report(label: str, times: list[float], parts: list[dict[str, float]], flops: float, mm: float, n: int) -> None:
    i = sorted(range(len(times)), key=times.__getitem__)[(len(times) - 1) // 2]   # median run (lower for even)
    med = times[i]
    net = sum(parts[i].get(k, 0.0) for k in NETWORK)
    pool = sum(parts[i].get(k, 0.0) for k in POOLERS)
    other = med - net - pool
    print(f"\n[{label}]  detections={n}  runs={', '.join(f'{t:.2f}' for t in times)} s  median={med:.2f} s")
    print(f"  FLOPs/detect          {flops / 1e9:8.1f} GFLOP")
    print(f"  achieved (whole call) {flops / med / 1e9:8.1f} GFLOP/s = {100 * flops / med / 1e9 / mm:5.1f} % of matmul")
    print(f"  achieved (network)    {flops / net / 1e9:8.1f} GFLOP/s = {100 * flops / net / 1e9 / mm:5.1f} % of matmul")
    print(f"  time: network {net:.3f} s, ROIAlign poolers {pool:.3f} s, outside both {other:.3f} s "
          f"({100 * other / med:.1f} %)")
    for k in NETWORK + POOLERS:
        print(f"     {k:28s} {parts[i].get(k, 0.0):7.3f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size", default="1280x960", help="W x H of the test image")
    ap.add_argument("--bf16-min-size", type=int, default=320,
                    help="short side for the bf16 run (0 = full 800; bf16 is emulated on CPUs without AVX512-BF16/AMX)")
    ap.add_argument("--skip-bf16", action="store_true")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.lower().split("x"))
    dev = torch.device("cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, load average {os.getloadavg()[0]:.1f} "
          f"(other processes skew every figure)")

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    grey = (128 + 60 * np.sin(xx / 37.0) * np.cos(yy / 53.0)).astype(np.float32)
    img = np.repeat(grey[..., None], 3, axis=2)
    settings = DetectorSettings()

    with tempfile.TemporaryDirectory() as tmp:
        pkl = write_r101_pkl(Path(tmp) / "model_final_a3ec72.pkl", seed=0, bias_class=0)
        t = time.perf_counter()
        det = R101Detector(pkl, dev, channels_last=False)
        print(f"load: {time.perf_counter() - t:.2f} s")
    timer = ModuleTimer(det.model, NETWORK + POOLERS)

    mm32 = matmul_rate(torch.float32)
    print(f"fp32 matmul 2048²: {mm32:.1f} GFLOP/s")
    flops = count_flops(det, img, settings)
    res: dict[bool, tuple[list[float], list[dict[str, float]]]] = {False: ([], []), True: ([], [])}
    n = 0
    for cl in (False, True):   # warm both layouts
        det.model.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
        det.detect(img, settings)
    for _ in range(args.runs):
        for cl in (False, True):
            det.model.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
            dt, parts, n = run_once(det, img, settings, timer)
            res[cl][0].append(dt)
            res[cl][1].append(parts)
    mm32b = matmul_rate(torch.float32)
    print(f"fp32 matmul 2048² again: {mm32b:.1f} GFLOP/s (using the mean {0.5 * (mm32 + mm32b):.1f})")
    mm = 0.5 * (mm32 + mm32b)
    for cl in (False, True):
        report(f"fp32, {'channels_last' if cl else 'contiguous (NCHW)'}, {w}x{h}", *res[cl], flops, mm, n)

    if args.skip_bf16:
        return
    mmbf = matmul_rate(torch.bfloat16, n=512, reps=2)
    print(f"\nbf16 matmul 512²: {mmbf:.2f} GFLOP/s ({100 * mmbf / mm:.1f} % of fp32)")
    det.model.to(memory_format=torch.channels_last)
    if args.bf16_min_size:
        det.min_size, det.max_size = args.bf16_min_size, int(args.bf16_min_size * 1333 / 800)
    bf = DetectorSettings(precision="bf16")
    flops_bf = count_flops(det, img, bf)
    dt, parts, n = run_once(det, img, bf, timer)
    report(f"bf16 autocast, channels_last, short side {det.min_size}", [dt], [parts], flops_bf, mmbf, n)
    det.min_size, det.max_size = 800, 1333


if __name__ == "__main__":
    with torch.inference_mode():
        main()
