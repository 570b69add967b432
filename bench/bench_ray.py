"""Ray Data batch vs the local batch on this machine: images/s for 1 and 2 CPU actors, and the scheduling overhead
per image next to the per-image time at 1280 px (prints figures; asserts nothing).

    .venv/bin/python bench/bench_ray.py [--images 5] [--side 1280] [--detector none|r101] [--models DIR]

Inputs: the scikit-image 'astronaut' photo as 8-bit gray, resized to SIDE×SIDE, saved as PNGs. Weights: random ones
in the official formats (as the tests write them) unless --models is given; the timings do not depend on the
values. Default preset, default colorizer; no detector by default (R101 alone costs ~10 s an image here).

Figures, each from one run (the machine may be shared: the load average is printed):
* local: the local batch (batch.run_batch, sequential) with 1 and with 2 torch threads, images/s.
* ray A×T: 1 actor of 2 CPUs, 2 actors of 1 CPU on ray.init(num_cpus=2): wall time with actor start-up,
  steady-state images/s (after each actor's first image, which also loads the models), and the scheduling
  overhead per image: the idle gap on an actor between one image's end and the next one's start (worker-side
  wall-clock stamps), next to the worker's own time per image (read + networks + write).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def make_inputs(folder: Path, n: int, side: int) -> None:
    from PIL import Image
    from skimage import data
    from skimage.color import rgb2gray
    from skimage.util import img_as_ubyte

    g = Image.fromarray(img_as_ubyte(rgb2gray(data.astronaut()))).resize((side, side), Image.BICUBIC)
    for k in range(n):
        g.rotate(90 * (k % 4)).save(folder / f"img{k:03d}.png")


def make_models(folder: Path, detector: str) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from fake_colorizers import write_colorizer_pth

    write_colorizer_pth("eccv16", folder, seed=1)
    write_colorizer_pth("siggraph17", folder, seed=2, with_num_batches_tracked=False)
    if detector != "none":
        from fake_r101 import write_r101_pkl

        write_r101_pkl(folder / "model_final_a3ec72.pkl", seed=3, bias_class=0)


def item_seconds(o) -> float:
    """The worker's own time on one image: read + networks + masks/encode/marker."""
    s = o.seconds
    return s.get("read", 0.0) + s.get("run", 0.0) + s.get("masks", 0.0) + s.get("encode", 0.0) + s.get("marker", 0.0)


def bench_local(inputs: Path, out: Path, opts, models: Path, threads: int) -> float:
    import torch

    from patchcolor import batch
    from patchcolor.io import load_image
    from patchcolor.pipeline import Pipeline

    torch.set_num_threads(threads)
    pipe = Pipeline(models, device="cpu")
    plan = batch.plan_batch([inputs], out)
    pipe.run(load_image(plan.items[0].src, 250_000_000), opts)    # models loaded, kernels warm
    t0 = time.perf_counter()
    s = batch.run_batch(plan, lambda src: pipe.run(src, opts), max_pixels=250_000_000, overlap=False)
    wall = time.perf_counter() - t0
    assert s.count("done") == len(plan.items)
    return wall / len(plan.items)


def bench_ray(inputs: Path, out: Path, opts, models: Path, actors: int, threads: int) -> dict:
    """Worker-side wall-clock stamps per image (start_epoch/end_epoch, pid) give, per actor, the idle gap between
    one image's end and the next one's start: the time Ray Data's scheduling adds per image."""
    from patchcolor import batch
    from patchcolor.cluster import RaySettings, run_ray_batch

    plan = batch.plan_batch([inputs], out)
    t0 = time.time()
    s = run_ray_batch(plan, opts, RaySettings(cpus_per_worker=threads, workers=actors), models=models,
                      device="cpu")
    wall = time.time() - t0
    assert s.count("done") == len(plan.items), s.line(plan.out_dir)
    by_pid: dict[float, list] = {}
    for o in s.outcomes:
        by_pid.setdefault(o.seconds["pid"], []).append(o.seconds)
    gaps, busy, firsts, steady = [], [], [], 0
    for secs in by_pid.values():
        secs.sort(key=lambda x: x["start_epoch"])
        firsts.append(secs[0]["end_epoch"])
        for a, b in zip(secs, secs[1:]):            # the first image per actor also loads the models: left out
            gaps.append(b["start_epoch"] - a["end_epoch"])
            busy.append(item_seconds(type("O", (), {"seconds": b})))
            steady += 1
    last = max(x["end_epoch"] for v in by_pid.values() for x in v)
    span = last - min(firsts)
    return dict(wall=wall, first=min(x["start_epoch"] for v in by_pid.values() for x in v) - t0,
                ips=steady / span if span > 0 else float("nan"), used=len(by_pid),
                gap=float(np.mean(gaps)) if gaps else float("nan"), busy=float(np.mean(busy)) if busy else 1.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=5)
    ap.add_argument("--side", type=int, default=1280)
    ap.add_argument("--detector", default="none")
    ap.add_argument("--models", type=Path)
    args = ap.parse_args()

    import ray
    import ray.data

    from patchcolor.options import make_options
    from patchcolor.precision import cpu_report

    print(cpu_report().line() + f"; load average {os.getloadavg()[0]:.1f} at start; ray {ray.__version__}")
    with tempfile.TemporaryDirectory(prefix="bench_ray-") as tmp:
        tmp = Path(tmp)
        inputs = tmp / "in"
        inputs.mkdir()
        make_inputs(inputs, args.images, args.side)
        models = args.models
        if models is None:
            models = tmp / "models"
            models.mkdir()
            make_models(models, args.detector)
        os.environ["PATCHCOLOR_MODELS"] = str(models)
        opts = make_options("default", detector=args.detector)
        print(f"{args.images} images {args.side}x{args.side} gray, detector {args.detector}, colorizer "
              f"{opts.colorizer}, preset default")
        local = {}
        for threads in (1, 2):
            local[threads] = bench_local(inputs, tmp / f"local{threads}", opts, models, threads)
            print(f"local   1 process x {threads} thread(s): {local[threads]:.2f} s/image, "
                  f"{1 / local[threads]:.2f} images/s")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        try:
            for actors, threads in ((1, 2), (2, 1)):
                r = bench_ray(inputs, tmp / f"ray{actors}x{threads}", opts, models, actors, threads)
                print(f"ray     {actors} actor(s) x {threads} CPU ({r['used']} did work): wall {r['wall']:.1f} s "
                      f"(first image started after {r['first']:.1f} s: actor start-up), steady {r['ips']:.2f} "
                      f"images/s; per image {r['busy']:.2f} s of work + {r['gap'] * 1000:.0f} ms scheduling gap "
                      f"= {100 * r['gap'] / r['busy']:.1f} % (local {threads} thread(s): {local[threads]:.2f} s/image)")
        finally:
            ray.shutdown()


if __name__ == "__main__":
    main()
