"""Benchmark the r101 detector on this machine: prints figures, asserts nothing.

Builds a random (class-biased, so it finds 100 instances) Detectron2 R101-FPN checkpoint in a temp
dir and times ``detect()`` on a 1280x960 grey image (warm, median of --runs; variants interleaved):

  plain      the straight torchvision port: NCHW, FrozenBN modules, single-threaded roi_align
  cl         + channels_last
  onednn     + FrozenBN folded into the convs + roi_align split over threads (R101Detector without Winograd)
  default    what R101Detector builds here: on AVX2 CPUs NCHW with the large-map 3×3 convolutions through
             NNPACK's Winograd (patchcolor.winograd), otherwise the same as onednn
  bf16       default under bf16 autocast (at a reduced --bf16-min-size: emulated on AVX2-only CPUs)

For each: FLOPs of one detect() (torch.utils.flop_counter.FlopCounterMode; convs/matmuls only, counted as direct
convolutions, so a Winograd variant's "achieved" rate is an equivalent rate and may exceed the matmul rate),
achieved GFLOP/s against torch's own 2048² matmul rate in the same dtype, by wall time and by
process CPU time / threads (the latter is robust to other processes sharing the cores), and where
the time goes: network modules, ROIAlign poolers, everything else (resize, normalization/padding,
anchors, box decode, top-k, NMS, mask paste).

Usage: .venv/bin/python bench/bench_detector.py [--runs 3] [--size 1280x960] [--bf16-min-size 320]
                                               [--threads N] [--skip-bf16] [--only-default]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
from torchvision.ops import roi_align

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fake_r101 import write_r101_pkl  # noqa: E402
from patchcolor import winograd  # noqa: E402
from patchcolor.segment import r101  # noqa: E402
from patchcolor.segment.base import DetectorSettings  # noqa: E402
from patchcolor.segment.r101 import R101Detector  # noqa: E402

STAGES = ("transform", "backbone", "rpn", "roi_heads")   # the model's own top-level steps
NETWORK = ("backbone", "rpn.head", "roi_heads.box_head", "roi_heads.box_predictor", "roi_heads.mask_head",
           "roi_heads.mask_predictor")
POOLERS = ("roi_heads.box_roi_pool", "roi_heads.mask_roi_pool")


def clocks() -> tuple[float, float]:
    """(wall, process CPU) seconds."""
    return time.perf_counter(), time.process_time()


def matmul_rate(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> tuple[float, float]:
    """(wall, CPU-time) GFLOP/s of torch's own n x n matmul in ``dtype`` (warm)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    w, c = clocks()
    for _ in range(reps):
        a @ b
    w2, c2 = clocks()
    flops = 2 * n ** 3 * reps / 1e9
    return flops / (w2 - w), flops / ((c2 - c) / torch.get_num_threads())


class ModuleTimer:
    """Wall time spent inside the named submodules, via forward pre/post hooks."""

    def __init__(self, model: torch.nn.Module, names: tuple[str, ...]) -> None:
        self.total: dict[str, float] = defaultdict(float)
        self._start: dict[str, float] = {}
        for name in names:
            m = model.get_submodule(name)
            m.register_forward_pre_hook(lambda mod, args, n=name: self._start.__setitem__(n, time.perf_counter()),
                                        prepend=True)
            m.register_forward_hook(lambda mod, args, out, n=name: self._stop(n))

    def _stop(self, name: str) -> None:
        self.total[name] += time.perf_counter() - self._start[name]


class Variant:
    def __init__(self, label: str, det: R101Detector, settings: DetectorSettings, single_thread_roi: bool = False):
        self.label, self.det, self.settings, self.single_thread_roi = label, det, settings, single_thread_roi
        self.timer = ModuleTimer(det.model, STAGES + NETWORK[1:] + POOLERS)
        self.runs: list[tuple[float, float, dict[str, float]]] = []
        self.flops = 0.0
        self.n = 0

    def call(self, img: np.ndarray) -> None:
        saved: Callable[..., torch.Tensor] = r101.roi_align_v2
        if self.single_thread_roi:   # torchvision's own single-threaded kernel
            r101.roi_align_v2 = lambda f, rois, size, scale: roi_align(f, rois, size, scale, 0, True)
        try:
            self.n = len(self.det.detect(img, self.settings))
        finally:
            r101.roi_align_v2 = saved

    def timed(self, img: np.ndarray) -> None:
        self.timer.total.clear()
        w, c = clocks()
        self.call(img)
        w2, c2 = clocks()
        self.runs.append((w2 - w, (c2 - c) / torch.get_num_threads(), dict(self.timer.total)))

    def count_flops(self, img: np.ndarray) -> None:
        """Direct-convolution FLOPs (the counter does not see NNPACK calls: Winograd is off while counting)."""
        saved, winograd.MIN_PIXELS = winograd.MIN_PIXELS, 1 << 62
        try:
            with FlopCounterMode(display=False) as fc:
                self.call(img)
        finally:
            winograd.MIN_PIXELS = saved
        self.flops = float(fc.get_total_flops())

    def report(self, mm_wall: float, mm_cpu: float) -> None:
        walls = [r[0] for r in self.runs]
        i = sorted(range(len(walls)), key=walls.__getitem__)[(len(walls) - 1) // 2]   # median (lower if even)
        wall, cpu, p = self.runs[i]
        net = sum(p.get(k, 0.0) for k in NETWORK)
        pool = sum(p.get(k, 0.0) for k in POOLERS)
        other = wall - net - pool
        rpn_post = p.get("rpn", 0.0) - p.get("rpn.head", 0.0)
        roi_post = p.get("roi_heads", 0.0) - sum(p.get(k, 0.0) for k in NETWORK[2:] + POOLERS)
        outside_model = wall - sum(p.get(k, 0.0) for k in STAGES)
        g = self.flops / 1e9
        print(f"\n[{self.label}]  detections={self.n}  runs={', '.join(f'{r[0]:.2f}' for r in self.runs)} s "
              f"(median {wall:.2f} s wall, {cpu:.2f} s CPU/thread)")
        print(f"  FLOPs/detect {g:.1f} GFLOP;  achieved {g / wall:.1f} GFLOP/s wall = {100 * g / wall / mm_wall:.0f} % of "
              f"matmul;  by CPU time {g / cpu:.1f} GFLOP/s = {100 * g / cpu / mm_cpu:.0f} % of matmul")
        print(f"  network-only rate {g / net:.1f} GFLOP/s = {100 * g / net / mm_wall:.0f} % of matmul (wall)")
        print(f"  time: network {net:.2f} s | ROIAlign poolers {pool:.2f} s | outside both {other:.3f} s "
              f"({100 * other / wall:.1f} %): outside the model (resize, to-tensor, mask paste) {outside_model:.3f} s, "
              f"normalize+pad {p.get('transform', 0.0):.3f} s, RPN anchors/decode/top-k/NMS {rpn_post:.3f} s, "
              f"ROI decode/NMS/mask select {roi_post:.3f} s")
        print("  " + ", ".join(f"{k.split('.')[-1]} {p.get(k, 0.0):.2f}" for k in NETWORK + POOLERS))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size", default="1280x960", help="W x H of the test image")
    ap.add_argument("--bf16-min-size", type=int, default=320,
                    help="short side for the bf16 run (800 = full; bf16 is emulated on CPUs without AVX512-BF16/AMX)")
    ap.add_argument("--skip-bf16", action="store_true")
    ap.add_argument("--only-default", action="store_true", help="fp32: time only the default variant")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads (0 = torch's default); 1 gives contention-robust CPU-time ratios on a busy box")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    w, h = (int(v) for v in args.size.lower().split("x"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, load average {os.getloadavg()[0]:.1f} "
          f"(other processes on these cores skew wall-clock figures)")

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    grey = (128 + 60 * np.sin(xx / 37.0) * np.cos(yy / 53.0)).astype(np.float32)
    img = np.repeat(grey[..., None], 3, axis=2)
    fp32 = DetectorSettings()

    with tempfile.TemporaryDirectory() as tmp:
        pkl = write_r101_pkl(Path(tmp) / "model_final_a3ec72.pkl", seed=0, bias_class=0)
        t = time.perf_counter()
        default = R101Detector(pkl, torch.device("cpu"))
        how = "Winograd 3×3 (NNPACK), NCHW" if default.winograd else "channels_last (oneDNN)"
        print(f"load (read pkl, map keys, fold BN, {how}): {time.perf_counter() - t:.2f} s")
        variants = [Variant(f"default: {how} + folded BN + threaded roi_align", default, fp32)]
        if not args.only_default:
            cpu = torch.device("cpu")
            variants = [Variant("plain port: NCHW, FrozenBN modules, 1-thread roi_align",
                                R101Detector(pkl, cpu, channels_last=False, fold_bn=False, winograd=False), fp32, True),
                        Variant("channels_last only", R101Detector(pkl, cpu, fold_bn=False, winograd=False), fp32, True),
                        *([Variant("oneDNN: channels_last + folded BN + threaded roi_align",
                                   R101Detector(pkl, cpu, winograd=False), fp32)] if default.winograd else []),
                        *variants]

    mm1 = matmul_rate(torch.float32)
    for v in variants:
        v.count_flops(img)   # also warms up
    for _ in range(args.runs):
        for v in variants:
            v.timed(img)
    mm2 = matmul_rate(torch.float32)
    mm_wall, mm_cpu = (mm1[0] + mm2[0]) / 2, (mm1[1] + mm2[1]) / 2
    print(f"fp32 matmul 2048²: {mm1[0]:.1f} / {mm2[0]:.1f} GFLOP/s wall before / after; by CPU time "
          f"{mm1[1]:.1f} / {mm2[1]:.1f} (using the means {mm_wall:.1f} / {mm_cpu:.1f})")
    for v in variants:
        v.report(mm_wall, mm_cpu)

    if args.skip_bf16:
        return
    bf_wall, bf_cpu = matmul_rate(torch.bfloat16, n=512, reps=2)
    print(f"\nbf16 matmul 512²: {bf_wall:.2f} GFLOP/s ({100 * bf_wall / mm_wall:.1f} % of fp32)")
    default.min_size, default.max_size = args.bf16_min_size, int(args.bf16_min_size * 1333 / 800)
    ref = Variant(f"fp32 default, short side {default.min_size}", default, fp32)
    bf = Variant(f"bf16 autocast, short side {default.min_size}", default, DetectorSettings(precision="bf16"))
    for v in (ref, bf):
        v.count_flops(img)
        v.timed(img)
    ref.report(mm_wall, mm_cpu)
    print("  (bf16 rates below are against the fp32 matmul rate; its own bf16 matmul is "
          f"{bf_wall:.2f} GFLOP/s here)")
    bf.report(mm_wall, mm_cpu)


if __name__ == "__main__":
    with torch.inference_mode():
        main()
