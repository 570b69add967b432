"""DDColor on this machine: per-input times, the encoder/decoder split, GFLOP/s against the fp32 matmul rate measured
in the same process, peak RSS, what each CPU change bought, the crop size, and the whole photo against the default
ECCV16 run (prints figures, asserts nothing; ratios are measured within one run).

Random weights in the official format (tests/fake_colorizers.py: converged spectral norms, visible layer scales),
DDColor-T and DDColor-L, written once into ``--cache`` (default: a folder in the system's temp dir) and loaded with
the real loader. Rows, after the machine line (CPU, threads, load average, the fp32 matmul rate: 2048² GEMM, best
of 5):

* ``forward``: per model and input (512² and 256² one at a time, 256² four in a batch): seconds per input (min and
  median of --reps, wall clock), the split encoder / pixel decoder / colour decoder (transformer) / tail, the
  network's GFLOP (torch FlopCounterMode on the library's own forward: what the network computes as published)
  and that count over the best time as GFLOP/s and % of the matmul rate;
* ``changes`` (DDColor-T, 512² and 256²×4): the library's forward (spandrel-extra-arches, spectral-norm hooks,
  feature hooks) against ours with the CPU changes switched on one after another (interleaved, min / median):
  folded spectral norm + explicit forward, cached position embeddings, fused attention, folded tail,
  channels-last; max |Δab| against the library in each row;
* ``crops``: DDColor-T per crop (batch of 4) at several crop sides;
* ``rss``: a fresh process per model loads it and runs 512² + 256²×4: peak RSS and load seconds;
* ``photo``: a 1024×683 gray photo (scikit-image's coffee), biased random R101 with 4 objects, the default preset:
  ``Pipeline.run`` warm with ECCV16 (the default) and with DDColor-T, alternating, median of --photo-reps; the
  ratio DDColor-T / ECCV16 (issue 21's goal: ≤ 1.5).

    .venv/bin/python bench/bench_ddcolor.py                 # everything (~10-20 min on 2 busy cores)
    .venv/bin/python bench/bench_ddcolor.py --skip-large    # DDColor-T only
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANTS = {"tiny": ("convnext-t", "ddcolor_paper_tiny.pth"), "large": ("convnext-l", "ddcolor_modelscope.pth")}


def load_line() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def matmul_rate(n: int = 2048, reps: int = 5) -> float:
    """fp32 GEMM rate of this process (GFLOP/s, best of ``reps``)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(reps))
    return 2 * n ** 3 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def weights(cache: Path, variant: str) -> Path:
    """The random official-format file of ``variant`` in ``cache`` (made once)."""
    from fake_colorizers import write_ddcolor

    encoder, name = VARIANTS[variant]
    path = cache / name
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        tmp = cache / "tmp"
        made = write_ddcolor(tmp, "pth", encoder=encoder, seed=7,
                             name="ddcolor-tiny" if variant == "tiny" else "ddcolor")
        made.rename(path)
        tmp.rmdir()
        print(f"  (made random {variant} weights in {time.perf_counter() - t:.0f} s: {path})", flush=True)
    return path


def load(path: Path, **flags):
    from patchcolor.colorize.ddcolor import DDColorColorizer, build_network, fold_spectral_norm, read_state_dict

    state, _ = read_state_dict(path)
    net = build_network(state).eval().requires_grad_(False)
    fold_spectral_norm(net)
    return DDColorColorizer(net, **flags).eval()


def library(path: Path):
    """The library's network as published (spectral-norm and feature hooks), on the same weights."""
    from spandrel_extra_arches.architectures.DDColor import DDColorArch

    from patchcolor.colorize.ddcolor import read_state_dict

    state, _ = read_state_dict(path)
    return DDColorArch().load(state).model.eval().requires_grad_(False)


def gflop(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops() / 1e9


def parts(model, x: torch.Tensor) -> dict[str, float]:
    """Seconds of the encoder, pixel decoder, colour decoder and tail for one forward of ``model`` (ours)."""
    out: dict[str, float] = {}
    net = model.net
    t = time.perf_counter()
    xn = net.normalize(x)
    if model.channels_last:
        xn = xn.contiguous(memory_format=torch.channels_last)
    feats = model.encode(xn)
    out["encoder"] = time.perf_counter() - t
    t = time.perf_counter()
    scales = model.decode(feats)
    out["pixel decoder"] = time.perf_counter() - t
    t = time.perf_counter()
    embed = model.color_queries(scales)
    out["colour decoder"] = time.perf_counter() - t
    t = time.perf_counter()
    model.tail(scales[2], embed, xn)
    out["tail"] = time.perf_counter() - t
    return out


def bench_forward(path: Path, variant: str, reps: int, rate: float) -> None:
    from patchcolor.colorize.ddcolor import random_gray_batch

    model, ref = load(path), library(path)
    for side, batch in ((512, 1), (256, 1), (256, 4)):
        x = random_gray_batch(batch, side)
        with torch.inference_mode():
            flops = gflop(lambda: ref(x)) / batch
            model(x)
            splits = [parts(model, x) for _ in range(reps)]
            times = [sum(s.values()) / batch for s in splits]
        best = min(times)
        split = {k: min(s[k] for s in splits) / batch for k in splits[0]}
        share = ", ".join(f"{k} {v:.2f}" for k, v in split.items())
        print(f"forward {variant:5s} {side}²×{batch}: {best:.2f} s/input (median {statistics.median(times):.2f}); "
              f"{share}; {flops:.0f} GFLOP/input -> {flops / best:.0f} GFLOP/s = {100 * flops / best / rate:.0f} % "
              f"of matmul; {load_line()}", flush=True)
    del model, ref


def bench_changes(path: Path, reps: int) -> None:
    from patchcolor.colorize.ddcolor import random_gray_batch

    ref = library(path)
    plain = load(path, fold_tail=False, cache_positions=False, fast_attention=False, channels_last=False)
    last = load(path)
    steps = [("library forward (spandrel, hooks)", ref, {}),
             ("+ folded spectral norm, explicit forward", plain, {}),
             ("+ cached position embeddings", plain, {"cache_positions": True}),
             ("+ fused attention (no weights returned)", plain, {"cache_positions": True, "fast_attention": True}),
             ("+ folded tail (a/b projection before the ×4 shuffle)", plain,
              {"cache_positions": True, "fast_attention": True, "fold_tail": True}),
             ("+ channels-last memory format (= the default)", last, {})]
    for side, batch in ((512, 1), (256, 4)):
        x = random_gray_batch(batch, side, seed=1)
        times: dict[int, list[float]] = {i: [] for i in range(len(steps))}
        diffs: dict[int, float] = {}
        with torch.inference_mode():
            want = ref(x)
            for i, (_, model, flags) in enumerate(steps):
                for k in ("cache_positions", "fast_attention", "fold_tail"):
                    if model is plain:
                        setattr(model, k, flags.get(k, False))
                diffs[i] = float((model(x) - want).abs().max())
            for _ in range(reps):
                for i, (_, model, flags) in enumerate(steps):
                    for k in ("cache_positions", "fast_attention", "fold_tail"):
                        if model is plain:
                            setattr(model, k, flags.get(k, False))
                    times[i].append(_timed(lambda: model(x)) / batch)
        base = min(times[0])
        print(f"changes tiny {side}²×{batch} (s/input, min / median; max |Δab| vs the library, max |ab| "
              f"{float(want.abs().max()):.0f}); {load_line()}", flush=True)
        for i, (label, _, _) in enumerate(steps):
            print(f"  {label:58s} {min(times[i]):6.2f} / {statistics.median(times[i]):6.2f}  "
                  f"x{base / min(times[i]):.2f}  Δab {diffs[i]:.1e}", flush=True)
    del ref, plain, last


def bench_crops(path: Path, reps: int) -> None:
    from patchcolor.colorize.ddcolor import random_gray_batch

    model = load(path)
    row = []
    with torch.inference_mode():
        for side in (128, 192, 256, 320, 384, 512):
            x = random_gray_batch(4, side)
            model(x)
            row.append(f"{side}: {min(_timed(lambda: model(x)) for _ in range(reps)) / 4:.2f}")
    print(f"crops tiny, s per crop (batch of 4): {', '.join(row)}; {load_line()}", flush=True)


def rss_child(path: str) -> None:
    """Child process: load one model with the real loader, run 512² and 256²×4; print JSON."""
    from patchcolor.colorize import load_colorizer
    from patchcolor.colorize.ddcolor import random_gray_batch

    t = time.perf_counter()
    model = load_colorizer("ddcolor", Path(path), torch.device("cpu"))
    loaded = time.perf_counter() - t
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with torch.inference_mode():
        model(random_gray_batch(1, 512))
        model(random_gray_batch(4, 256))
    print(json.dumps({"load_s": loaded, "rss_after_load_mb": rss_loaded,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def bench_rss(path: Path, variant: str) -> None:
    out = subprocess.run([sys.executable, __file__, "--rss-child", str(path)], capture_output=True, text=True)
    if out.returncode != 0:
        print(f"rss {variant}: child failed: {out.stderr.strip().splitlines()[-1:]}")
        return
    d = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"rss {variant}: load {d['load_s']:.1f} s, peak RSS after load {d['rss_after_load_mb']:.0f} MB, "
          f"after 512² + 256²×4 {d['peak_rss_mb']:.0f} MB (fresh process)", flush=True)


def bench_photo(cache: Path, tiny: Path, reps: int) -> None:
    import shutil

    from bench_batch import fake_models, make_photo
    from patchcolor.options import make_options
    from patchcolor.pipeline import Pipeline
    from patchcolor.prepare import SourceImage

    models = fake_models(cache / "models")
    if not (models / tiny.name).exists():
        shutil.copyfile(tiny, models / tiny.name)
    src = SourceImage(make_photo(1024))
    pipe = Pipeline(models, device="cpu")
    rows = {"eccv16": make_options("default", max_instances=4),
            "ddcolor-tiny": make_options("default", max_instances=4, colorizer="ddcolor-tiny")}
    times: dict[str, list[float]] = {k: [] for k in rows}
    colorize: dict[str, list[float]] = {k: [] for k in rows}
    found = {}
    for name, opts in rows.items():                 # warm: models loaded, one run each
        found[name] = len(pipe.run(src, opts).instances)
    for _ in range(reps):
        for name, opts in rows.items():
            t = time.perf_counter()
            res = pipe.run(src, opts)
            times[name].append(time.perf_counter() - t)
            colorize[name].append(res.timings.get("colorize", float("nan")))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"photo 1024×683 gray, default preset, {found['eccv16']} objects (biased random R101), warm, median of "
          f"{reps}; {load_line()}", flush=True)
    for name in rows:
        print(f"  {name:13s} {med[name]:6.2f} s/image (min {min(times[name]):.2f}), colorize step "
              f"{statistics.median(colorize[name]):.2f} s", flush=True)
    print(f"  ratio ddcolor-tiny / eccv16: {med['ddcolor-tiny'] / med['eccv16']:.2f} (median), "
          f"{min(times['ddcolor-tiny']) / min(times['eccv16']):.2f} (min)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "patchcolor-bench-ddcolor")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--photo-reps", type=int, default=3)
    ap.add_argument("--skip-large", action="store_true", help="DDColor-T only")
    ap.add_argument("--only", choices=["forward", "changes", "crops", "rss", "photo"], action="append")
    ap.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        rss_child(args.rss_child)
        return
    from patchcolor.precision import cpu_report

    rate = matmul_rate()
    print(f"{cpu_report().line()}; torch {torch.__version__}, {torch.get_num_threads()} threads; fp32 matmul "
          f"{rate:.0f} GFLOP/s (2048², best of 5); {load_line()}", flush=True)
    only = set(args.only or ["forward", "changes", "crops", "rss", "photo"])
    variants = ["tiny"] if args.skip_large else ["tiny", "large"]
    paths = {v: weights(args.cache, v) for v in variants}
    if "forward" in only:
        for v in variants:
            bench_forward(paths[v], v, args.reps, rate)
    if "changes" in only:
        bench_changes(paths["tiny"], args.reps)
    if "crops" in only:
        bench_crops(paths["tiny"], args.reps)
    if "rss" in only:
        for v in variants:
            bench_rss(paths[v], v)
    if "photo" in only:
        bench_photo(args.cache, paths["tiny"], args.photo_reps)
    print(f"matmul again at the end: {matmul_rate():.0f} GFLOP/s; {load_line()}")


if __name__ == "__main__":
    main()
