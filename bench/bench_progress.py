"""Progress benchmark (prints figures; asserts nothing): the longest gap between progress events of a job.

A 1024×683 gray photo (scikit-image's astronaut, resized) through ``Pipeline.run`` with random official-format
weights (tests/fake_colorizers.py, the biased random R101 of tests/fake_r101.py, which finds up to
--max-instances objects), CPU, fp32, for the ``seed`` and ``default`` presets. Rows per preset:

    cold      a fresh Pipeline: the job loads the detector and the colorizer (the gap while loading is printed)
    warm      the same job again on the loaded Pipeline (the first estimate of the remaining time is printed
              against the job's real duration)
    coarse    the warm job with the sub-steps off, as before them: the detector reports 8 points (its 4 ResNet
              stages, FPN, RPN, box and mask heads) and the colorizer once per batch

For each: seconds, events, the longest gap between two events (from the job's start to its end) and the events
around it, and the 95th percentile gap. Goal: progress every <= ~2 s of backend work on this CPU.

    .venv/bin/python bench/bench_progress.py [--max-instances 100] [--presets seed,default] [--no-coarse]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "backend"))


def photo(w: int = 1024, h: int = 683) -> np.ndarray:
    import cv2
    from skimage import data
    from skimage.color import rgb2gray

    return cv2.resize((rgb2gray(data.astronaut()) * 255).astype(np.uint8), (w, h), interpolation=cv2.INTER_AREA)


@contextlib.contextmanager
def coarse_progress():
    """The sub-steps off: the detector's 8 coarse points, the colorizer reporting once per batch."""
    from patchcolor import colorize
    from patchcolor.progress import NetworkSteps
    from patchcolor.segment import r101

    coarse = [("backbone.body.layer1", "backbone"), ("backbone.body.layer2", "backbone"),
              ("backbone.body.layer3", "backbone"), ("backbone.body.layer4", "backbone"),
              ("backbone.fpn", "feature pyramid"), ("rpn", "region proposals"), ("roi_heads.box_head", "object boxes"),
              ("roi_heads.mask_head", "object masks")]
    saved = r101.forward_progress, colorize.forward_progress
    r101.forward_progress = lambda model, fn, blocks: (contextlib.nullcontext() if fn is None
                                                       else NetworkSteps(model, coarse).report(fn))
    colorize.forward_progress = lambda model, fn, blocks=None: contextlib.nullcontext()
    try:
        yield
    finally:
        r101.forward_progress, colorize.forward_progress = saved


def run_job(pipe, src, opts) -> dict:
    events: list[tuple[float, str, float, str, float | None]] = []
    t0 = time.perf_counter()
    result = pipe.run(src, opts, progress=lambda s, f: events.append(
        (time.perf_counter() - t0, str(s), f, getattr(s, "text", ""), getattr(s, "eta_s", None))))
    total = time.perf_counter() - t0
    times = [0.0] + [e[0] for e in events] + [total]
    gaps = np.diff(times)
    i = int(np.argmax(gaps))
    before = "job start" if i == 0 else f"{events[i - 1][1]} {events[i - 1][2]:.2f} '{events[i - 1][3]}'"
    after = "job end" if i == len(events) else f"{events[i][1]} {events[i][2]:.2f} '{events[i][3]}'"
    return {"total": total, "events": len(events), "gap": float(gaps[i]), "where": f"{before} -> {after}",
            "p95": float(np.percentile(gaps, 95)), "instances": len(result.instances),
            "eta0": next((e[4] for e in events if e[4] is not None), None)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-instances", type=int, default=100)
    ap.add_argument("--presets", default="seed,default")
    ap.add_argument("--no-coarse", action="store_true", help="skip the 'coarse' rows")
    args = ap.parse_args()

    import torch

    from fake_colorizers import write_colorizer_pth
    from fake_r101 import write_r101_pkl
    from patchcolor.options import make_options
    from patchcolor.pipeline import Pipeline
    from patchcolor.precision import cpu_report
    from patchcolor.prepare import SourceImage

    cpu = cpu_report()
    print(f"CPU: {cpu.model}, {cpu.cores} cores, {cpu.isa}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    src = SourceImage(photo())
    rows = []
    with tempfile.TemporaryDirectory() as d:
        models = Path(d)
        write_colorizer_pth("eccv16", models, seed=1)
        write_r101_pkl(models / "model_final_a3ec72.pkl", seed=3, bias_class=0)
        for preset in args.presets.split(","):
            opts = make_options(preset, max_instances=args.max_instances)
            pipe = Pipeline(models, device="cpu")
            rows.append((preset, "cold", run_job(pipe, src, opts)))
            rows.append((preset, "warm", run_job(pipe, src, opts)))
            if not args.no_coarse:
                with coarse_progress():
                    rows.append((preset, "coarse", run_job(pipe, src, opts)))
            for preset_, kind, r in rows[-(2 if args.no_coarse else 3):]:
                eta = f"; first estimate {r['eta0']:.1f} s of {r['total']:.1f} s" if r["eta0"] is not None else ""
                print(f"{preset_:8s} {kind:7s} {r['total']:6.1f} s  {r['instances']:3d} objects  "
                      f"{r['events']:4d} events  longest gap {r['gap']:5.2f} s  p95 {r['p95']:4.2f} s{eta}\n{'':17s}gap: {r['where']}",
                      flush=True)
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
          f"(load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}; other processes share the CPU)")
    for preset, kind, r in rows:
        if kind == "warm":
            print(f"goal <= ~2 s between events, {preset} warm: {r['gap']:.2f} s "
                  f"{'met' if r['gap'] <= 2.0 else 'NOT met'}")


if __name__ == "__main__":
    main()
