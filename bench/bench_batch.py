"""Batch-path profile: where every second of ``patchcolor colorize`` goes, per stage and per image (prints figures,
asserts nothing). Random official-format weights (biased detector: it finds objects), a 1024×683 gray photo
(scikit-image's coffee) written N times.

Rows, each headed by the CPU line (model, cores, ISA, native bf16):
* ``pipeline``: Pipeline.run on the decoded image, warm (models loaded, one warm-up run first);
* ``batch-seq``: patchcolor.batch.run_batch without overlap (read, run, write one image after the other);
* ``batch-ovl``: run_batch as the CLI runs it (reader/writer threads overlap decode/encode with the networks);
* per stage seconds per image: read (decode), prepare, segment, colorize, fuse, finish, other (inside run, outside
  the stages), masks, encode, marker, and the wall time per image; the ratio batch-ovl / pipeline;
* ``--png-levels``: PNG encode time and size of one output at compress levels 0, 1, 3, 6, 9 (how
  io.PNG_COMPRESS_LEVEL was chosen);
* ``--service``: the same image as a GIMP job (gray8 pixels + options) through ``patchcolor serve`` on loopback:
  server-side stage seconds and the transport/queue overhead (wall − stages);
* ``--cli``: the real ``patchcolor colorize`` as a subprocess on 1 and on N copies: (t_N − t_1)/(N − 1) per image;
* ``--plan N``: the batch's own bookkeeping for N inputs, no pixels: planning a fresh batch, each input's lock +
  lock record + done-marker (batch.take, outputs.write_marker), planning it again once all are recorded; also with
  OUT = the input folder (``--suffix``), where planning reads OUT's records to tell outputs from inputs.
Both presets by default (``--presets seed default``): the seed row is the baseline the default is compared with.

    .venv/bin/python bench/bench_batch.py --n 4 --png-levels --service
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

STAGES = ("read", "prepare", "segment", "colorize", "fuse", "finish", "other", "masks", "encode", "marker")


def make_photo(width: int) -> np.ndarray:
    """(round(width*2/3), width) uint8 gray: skimage's coffee, resized (a real photograph's statistics)."""
    from PIL import Image
    from skimage import data
    from skimage.color import rgb2gray

    g = (rgb2gray(data.coffee()) * 255).round().astype(np.uint8)
    return np.asarray(Image.fromarray(g).resize((width, round(width * 2 / 3)), Image.BICUBIC))


def fake_models(folder: Path) -> Path:
    """Random ECCV16 + biased R101 weights in the official formats (kept in ``folder`` between runs)."""
    from fake_colorizers import write_colorizer_pth
    from fake_r101 import write_r101_pkl

    if (folder / "model_final_a3ec72.pkl").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    write_colorizer_pth("eccv16", folder, seed=1)
    write_r101_pkl(folder / "model_final_a3ec72.pkl", seed=3, bias_class=0)
    return folder


def per_stage(outcomes) -> dict[str, float]:
    """Median seconds per stage over the done outcomes; 'other' = run − the pipeline's own stages."""
    rows: dict[str, list[float]] = {k: [] for k in STAGES}
    for o in outcomes:
        if o.status != "done":
            continue
        s = dict(o.seconds)
        inside = sum(s.get(k, 0.0) for k in ("prepare", "segment", "colorize", "fuse", "finish"))
        s["other"] = s.get("run", inside) - inside
        for k in STAGES:
            rows[k].append(s.get(k, 0.0))
    return {k: statistics.median(v) if v else 0.0 for k, v in rows.items()}


def fmt_stages(d: dict[str, float]) -> str:
    return " ".join(f"{k} {d.get(k, 0.0):.3f}" for k in STAGES)


def bench_preset(pipe, opts, inputs: Path, out_root: Path, n: int, masks: bool, cpu: str) -> dict:
    from patchcolor import batch
    from patchcolor.io import load_image

    preset = opts.preset
    src = load_image(next(inputs.iterdir()), 10**9)
    pipe.run(src, opts)                                  # warm-up: models, first-call shapes
    times, stages = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        r = pipe.run(src, opts)
        times.append(time.perf_counter() - t0)
        stages.append(r.timings)
    p_img = statistics.median(times)
    p_st = {k: statistics.median(t.get(k, 0.0) for t in stages) for k in ("prepare", "segment", "colorize", "fuse",
                                                                            "finish")}
    print(f"[{cpu}] {preset:7s} pipeline  {p_img:.3f} s/img  " + fmt_stages(p_st), flush=True)
    res = {"pipeline": p_img}
    for name, overlap in (("batch-seq", False), ("batch-ovl", True)):
        out = out_root / f"{preset}-{name}"
        plan = batch.plan_batch([inputs], out, masks=masks)
        t0 = time.perf_counter()
        s = batch.run_batch(plan, lambda im: pipe.run(im, opts), max_pixels=10**9, overlap=overlap)
        wall = (time.perf_counter() - t0) / max(1, s.count("done"))
        res[name] = wall
        print(f"[{cpu}] {preset:7s} {name} {wall:.3f} s/img  " + fmt_stages(per_stage(s.outcomes)), flush=True)
    print(f"[{cpu}] {preset:7s} ratio batch-ovl / pipeline = {res['batch-ovl'] / p_img:.3f}  "
          f"batch-seq / pipeline = {res['batch-seq'] / p_img:.3f}", flush=True)
    return res


def bench_png_levels(pipe, inputs: Path, cpu: str, max_instances: int) -> None:
    import io

    from PIL import Image

    from patchcolor.io import load_image
    from patchcolor.options import make_options

    r = pipe.run(load_image(next(inputs.iterdir()), 10**9), make_options("default", max_instances=max_instances))
    h, w = r.image.shape[:2]
    mask = r.instances[0].full_mask(w, h) if r.instances else None
    for level in (0, 1, 3, 6, 9):
        row = []
        for what, arr in (("image", r.image), ("mask", mask)):
            if arr is None:
                continue
            best = float("inf")
            for _ in range(3):
                buf = io.BytesIO()
                t0 = time.perf_counter()
                Image.fromarray(arr).save(buf, format="PNG", compress_level=level)
                best = min(best, time.perf_counter() - t0)
            row.append(f"{what} {best * 1000:.0f} ms {buf.tell() / 1e6:.2f} MB")
        print(f"[{cpu}] png level {level}: " + ", ".join(row), flush=True)


def bench_service(models: Path, inputs: Path, n: int, cpu: str, tmp: Path, max_instances: int, detector: str
                  ) -> None:
    from patchcolor_client import Client
    from service_support import start_server

    from patchcolor.io import load_image
    from patchcolor.options import make_options

    src = load_image(next(inputs.iterdir()), 10**9)
    srv = start_server(tmp, "--log-level", "warning", models_dir=models)
    try:
        with Client(srv.endpoint, timeout_s=120) as c:
            pixels = np.ascontiguousarray(src.color)
            c.colorize(src.width, src.height, "gray8", pixels, make_options("default", max_instances=max_instances, detector=detector).to_dict())
            for preset in ("seed", "default"):
                walls, stages = [], []
                for _ in range(n):
                    t0 = time.perf_counter()
                    res = c.colorize(src.width, src.height, "gray8", pixels, make_options(preset, max_instances=max_instances, detector=detector).to_dict())
                    walls.append(time.perf_counter() - t0)
                    stages.append(dict(res.timings))
                keys = sorted({k for s in stages for k in s})
                med = {k: statistics.median(s.get(k, 0.0) for s in stages) for k in keys}
                inside = sum(v for k, v in med.items() if k in ("prepare", "segment", "colorize", "fuse", "finish"))
                wall = statistics.median(walls)
                print(f"[{cpu}] {preset:7s} service   {wall:.3f} s/job  "
                      + " ".join(f"{k} {v:.3f}" for k, v in med.items())
                      + f"  transport+queue {wall - inside:.3f}", flush=True)
    finally:
        srv.stop()


def bench_plan(n: int, tmp: Path, cpu: str) -> None:
    from patchcolor import batch
    from patchcolor.batch import outputs

    folder = tmp / "plan-in"
    folder.mkdir()
    for k in range(n):
        (folder / f"photo_{k:05d}.jpg").write_bytes(b"x")         # planning never reads the pixels
    for label, out, suffix in (("OUT apart", tmp / "plan-out", ""), ("OUT = input folder", folder, "_c")):
        t0 = time.perf_counter()
        plan = batch.plan_batch([folder], out, suffix=suffix)
        t1 = time.perf_counter()
        for item in plan.items:
            c = batch.take(item)
            assert isinstance(c, batch.Claim), c
            outputs.write_marker(item, 0)
            c.release()
        t2 = time.perf_counter()
        again = batch.plan_batch([folder], out, suffix=suffix)
        t3 = time.perf_counter()
        assert len(again.items) == n                               # no image written, so none is done
        print(f"[{cpu}] plan {n} inputs, {label}: fresh {(t1 - t0) / n * 1e6:.0f} us/input, lock + record + marker "
              f"{(t2 - t1) / n * 1e6:.0f} us/input, again with {n} records {(t3 - t2) / n * 1e6:.0f} us/input",
              flush=True)


def bench_cli(models: Path, inputs: Path, n: int, cpu: str, tmp: Path, preset: str, detector: str) -> None:
    import os
    import shutil

    one = tmp / "one"
    one.mkdir(exist_ok=True)
    shutil.copy(next(inputs.iterdir()), one / "p.png")
    env = dict(os.environ, PATCHCOLOR_MODELS=str(models))
    t = {}
    for name, folder in (("1", one), ("n", inputs)):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "patchcolor.cli", "colorize", str(folder), "-o",
                        str(tmp / f"cli-{preset}-{name}"), "--preset", preset, "--device", "cpu", "--max-instances", "4", "--detector", detector,
                        "--masks"],
                       env=env, check=True, capture_output=True)
        t[name] = time.perf_counter() - t0
    print(f"[{cpu}] {preset:7s} cli       {(t['n'] - t['1']) / (n - 1):.3f} s/img warm ((t{n} - t1)/{n - 1}); "
          f"t1 {t['1']:.2f} s (start-up + model load + 1 image)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4, help="images per row (default 4)")
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--presets", nargs="*", default=["seed", "default"], help="batch rows for these presets")
    ap.add_argument("--models", type=Path, help="weights folder (default: random official-format weights)")
    ap.add_argument("--max-instances", type=int, default=4, help="objects per image (the biased detector finds "
                    "many; default 4, as the issue's coffee photo)")
    ap.add_argument("--detector", default="r101", help="r101 (default) or none (networks: the colorizer only; "
                    "for a loaded machine where the 800-px R101 pass takes a minute)")
    ap.add_argument("--no-masks", action="store_true", help="do not write masks in the batch rows")
    ap.add_argument("--png-levels", action="store_true")
    ap.add_argument("--service", action="store_true")
    ap.add_argument("--cli", action="store_true")
    ap.add_argument("--plan", type=int, default=0, metavar="N", help="time the batch bookkeeping for N inputs")
    args = ap.parse_args()

    import torch
    from PIL import Image

    from patchcolor.pipeline import Pipeline
    from patchcolor.precision import cpu_report

    cpu = cpu_report().line() + f", torch threads {torch.get_num_threads()}"
    tmp = Path(tempfile.mkdtemp(prefix="pc-bench-batch-"))
    models = args.models or fake_models(Path(tempfile.gettempdir()) / "patchcolor-bench-models")
    inputs = tmp / "in"
    inputs.mkdir()
    photo = make_photo(args.width)
    for k in range(args.n):
        Image.fromarray(photo).save(inputs / f"p{k}.png")
    print(f"[{cpu}] {args.n} x {photo.shape[1]}x{photo.shape[0]} gray PNG, masks {not args.no_masks}, detector "
          f"{args.detector} (max {args.max_instances} objects), load average {os.getloadavg()[0]:.1f}", flush=True)
    pipe = Pipeline(models, device="cpu")
    from patchcolor.options import make_options

    res = {p: bench_preset(pipe, make_options(p, max_instances=args.max_instances, detector=args.detector), inputs, tmp / "out", args.n,
                           not args.no_masks, cpu) for p in args.presets}
    if "seed" in res and "default" in res:
        print(f"[{cpu}] default vs seed preset: pipeline {res['seed']['pipeline'] / res['default']['pipeline']:.2f}x"
              f", batch {res['seed']['batch-ovl'] / res['default']['batch-ovl']:.2f}x (seed time / default time)")
    if args.png_levels:
        bench_png_levels(pipe, inputs, cpu, args.max_instances)
    if args.service:
        bench_service(models, inputs, args.n, cpu, tmp, args.max_instances, args.detector)
    if args.cli:
        for p in args.presets:
            bench_cli(models, inputs, args.n, cpu, tmp, p, args.detector)
    if args.plan:
        bench_plan(args.plan, tmp, cpu)


if __name__ == "__main__":
    main()
