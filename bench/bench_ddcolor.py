"""DDColor on this machine: per-input times, the encoder/decoder split, GFLOP/s against the fp32 matmul rate measured
in the same process, peak RSS, what each CPU change bought, the crop size, and the whole photo against the default
ECCV16 run (prints figures, asserts nothing; ratios are measured within one run).

Random weights in the official format (tests/fake_colorizers.py: converged spectral norms, visible layer scales),
DDColor-T and DDColor-L, written once into ``--cache`` (default: a folder in the system's temp dir) and loaded with
the real loader. Times are wall seconds (what a user waits) and CPU seconds of the process (both threads: on a
machine shared with other work the steadier figure, as their load stretches the wall time, not the work). Rows, after
the machine line (CPU, threads, load average, the fp32 matmul rate: 2048² GEMM, best of 5, per wall and per CPU
second):

* ``forward``: per model and input (512² and 256² one at a time, 256² four in a batch): seconds per input (min and
  median of --reps), the split encoder / pixel decoder / colour decoder (transformer) / tail in CPU seconds, the
  network's GFLOP (torch FlopCounterMode on the library's own forward: what the network computes as published)
  and that count per second and per CPU second, against the matmul measured just before (% of its GFLOP/CPU-s);
* ``changes`` (DDColor-T, 512² and 256²×4): the library's forward (spandrel-extra-arches, spectral-norm hooks,
  feature hooks) against ours with the CPU changes switched on one after another (interleaved, min / median):
  folded spectral norm + explicit forward, cached position embeddings, fused attention, folded tail,
  channels-last; max |Δab| against the library in each row;
* ``crops``: DDColor-T per crop (batch of 4) at several crop sides;
* ``bf16``: ``--precision fast`` (bf16 autocast) where the CPU runs it natively: 512² time and the change of a/b;
* ``rss``: a fresh process per model loads it and runs 512² + 256²×4: peak RSS and load seconds;
* ``preview``: the dialog's first draft of a 6000×4000 layer with ECCV16 and each DDColor (fresh session, warm
  models, 4 objects; goal ≤ 1.5 s);
* ``photo``: a 1024×683 gray photo (scikit-image's coffee), biased random R101 with 4 objects, the default preset:
  ``Pipeline.run`` warm with ECCV16 (the default), DDColor-T and DDColor-L, alternating, median of --photo-reps;
  the ratios to ECCV16 (the goal for DDColor-T: ≤ 1.5).

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


def matmul_rate(n: int = 2048, reps: int = 5) -> tuple[float, float]:
    """fp32 GEMM rate of this process, best of ``reps``: (GFLOP per wall second, GFLOP per CPU second)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    runs = [timed(lambda: a @ b) for _ in range(reps)]
    return 2 * n ** 3 / min(w for w, _ in runs) / 1e9, 2 * n ** 3 / min(c for _, c in runs) / 1e9


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process: all its threads) of ``fn()``. On a shared machine the CPU time
    is the steadier figure: other processes' load stretches the wall time, not the work done."""
    t, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t, time.process_time() - c


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
    from patchcolor.colorizers.ddcolor import DDColorColorizer, build_network, fold_spectral_norm, read_state_dict

    state, _ = read_state_dict(path)
    net = build_network(state).eval().requires_grad_(False)
    fold_spectral_norm(net)
    return DDColorColorizer(net, **flags).eval()


def library(path: Path):
    """The library's network as published (spectral-norm and feature hooks), on the same weights."""
    from spandrel_extra_arches.architectures.DDColor import DDColorArch

    from patchcolor.colorizers.ddcolor import read_state_dict

    state, _ = read_state_dict(path)
    return DDColorArch().load(state).model.eval().requires_grad_(False)


def gflop(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops() / 1e9


def parts(model, x: torch.Tensor) -> dict[str, tuple[float, float]]:
    """(wall, CPU) seconds of the encoder, pixel decoder, colour decoder and tail for one forward of ``model``."""
    net, box = model.net, {}

    def encoder():
        xn = net.normalize(x)
        box["x"] = xn.contiguous(memory_format=torch.channels_last) if model.channels_last else xn
        box["feats"] = model.encode(box["x"])

    out = {"encoder": timed(encoder)}
    out["pixel decoder"] = timed(lambda: box.update(scales=model.decode(box["feats"])))
    out["colour decoder"] = timed(lambda: box.update(embed=model.color_queries(box["scales"])))
    out["tail"] = timed(lambda: model.tail(box["scales"][2], box["embed"], box["x"]))
    return out


def bench_forward(path: Path, variant: str, reps: int) -> None:
    """Per input: wall min (median), CPU seconds, the split (CPU s), and the network's GFLOP per CPU second
    against the matmul's GFLOP per CPU second measured just before (both threads counted in both)."""
    from patchcolor.colorizers.ddcolor import random_gray_batch

    model, ref = load(path), library(path)
    for side, batch in ((512, 1), (256, 1), (256, 4)):
        x = random_gray_batch(batch, side)
        with torch.inference_mode():
            flops = gflop(lambda: ref(x)) / batch
            model(x)
            rate_wall, rate_cpu = matmul_rate()
            splits = [parts(model, x) for _ in range(reps)]
        wall = [sum(w for w, _ in s.values()) / batch for s in splits]
        cpu = [sum(c for _, c in s.values()) / batch for s in splits]
        split = ", ".join(f"{k} {min(s[k][1] for s in splits) / batch:.2f}" for k in splits[0])
        print(f"forward {variant:5s} {side}²×{batch}: {min(wall):.2f} s/input wall "
              f"(median {statistics.median(wall):.2f}),"
              f" {min(cpu):.2f} CPU-s [{split}]; {flops:.0f} GFLOP/input: {flops / min(wall):.0f} GFLOP/s wall "
              f"(matmul {rate_wall:.0f}), {flops / min(cpu):.0f} GFLOP/CPU-s = {100 * flops / min(cpu) / rate_cpu:.0f} "
              f"% of matmul's {rate_cpu:.0f}; {load_line()}", flush=True)
    del model, ref


def bench_changes(path: Path, reps: int) -> None:
    from patchcolor.colorizers.ddcolor import random_gray_batch

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
        times: dict[int, list[tuple[float, float]]] = {i: [] for i in range(len(steps))}
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
                    w, c = timed(lambda: model(x))
                    times[i].append((w / batch, c / batch))
        base = min(c for _, c in times[0])
        print(f"changes tiny {side}²×{batch}: s/input wall min / median, CPU-s min, speed-up in CPU-s over the "
              f"library; max |Δab| vs the library (max |ab| {float(want.abs().max()):.0f}); {load_line()}", flush=True)
        for i, (label, _, _) in enumerate(steps):
            wall, cpu = [w for w, _ in times[i]], min(c for _, c in times[i])
            print(f"  {label:58s} {min(wall):6.2f} / {statistics.median(wall):6.2f}  {cpu:6.2f}  "
                  f"x{base / cpu:.2f}  Δab {diffs[i]:.1e}", flush=True)
    del ref, plain, last


def bench_crops(path: Path, reps: int) -> None:
    from patchcolor.colorizers.ddcolor import random_gray_batch

    model = load(path)
    row = []
    with torch.inference_mode():
        for side in (128, 192, 256, 320, 384, 512):
            x = random_gray_batch(4, side)
            model(x)
            runs = [timed(lambda: model(x)) for _ in range(reps)]
            row.append(f"{side}² {min(w for w, _ in runs) / 4:.2f} / {min(c for _, c in runs) / 4:.2f}")
    print(f"crops tiny, per crop in a batch of 4 (wall s / CPU-s, min of {reps}): {', '.join(row)}; {load_line()}",
          flush=True)


def peak_rss_mb(key: str = "VmHWM") -> float:
    """This process's peak RSS (VmHWM: unlike ru_maxrss, not carried over from the parent across exec), or its
    current RSS with ``key="VmRSS"``."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_child(path: str) -> None:
    """Child process: load one model with the real loader, run 512² and 256²×4; print JSON."""
    from patchcolor.colorizers import load_colorizer
    from patchcolor.colorizers.ddcolor import random_gray_batch

    base = peak_rss_mb()
    t = time.perf_counter()
    model = load_colorizer("ddcolor", Path(path), torch.device("cpu"))
    loaded = time.perf_counter() - t
    rss_loaded = peak_rss_mb()
    with torch.inference_mode():
        model(random_gray_batch(1, 512))
        after_512 = peak_rss_mb()
        model(random_gray_batch(4, 256))
    print(json.dumps({"load_s": loaded, "base_mb": base, "rss_after_load_mb": rss_loaded, "after_512_mb": after_512,
                      "peak_rss_mb": peak_rss_mb(), "rss_now_mb": peak_rss_mb("VmRSS")}))


def bench_rss(path: Path, variant: str) -> None:
    out = subprocess.run([sys.executable, __file__, "--rss-child", str(path)], capture_output=True, text=True)
    if out.returncode != 0:
        print(f"rss {variant}: child failed: {out.stderr.strip().splitlines()[-1:]}")
        return
    d = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"rss {variant}: load {d['load_s']:.1f} s; peak RSS (fresh process): {d['base_mb']:.0f} MB before, "
          f"{d['rss_after_load_mb']:.0f} MB after loading, {d['after_512_mb']:.0f} MB after 512², "
          f"{d['peak_rss_mb']:.0f} MB after 256²×4 (resident at the end {d['rss_now_mb']:.0f} MB)", flush=True)


def photo_and_pipeline(cache: Path, paths: dict[str, Path], side: int):
    """(a gray test photo of long side ``side``, a CPU Pipeline over the test models plus the DDColor files)."""
    import shutil

    from bench_batch import fake_models, make_photo
    from patchcolor.pipeline import Pipeline
    from patchcolor.prepare import SourceImage

    models = fake_models(cache / "models")
    for path in paths.values():
        if not (models / path.name).exists():
            shutil.copyfile(path, models / path.name)
    return SourceImage(make_photo(side)), Pipeline(models, device="cpu")


def bench_photo(cache: Path, paths: dict[str, Path], reps: int) -> None:
    from patchcolor.options import make_options

    src, pipe = photo_and_pipeline(cache, paths, 1024)
    rows = {"eccv16": make_options("default", max_instances=4),
            "ddcolor-tiny": make_options("default", max_instances=4, colorizer="ddcolor-tiny")}
    if "large" in paths:
        rows["ddcolor"] = make_options("default", max_instances=4, colorizer="ddcolor")
    times: dict[str, list[float]] = {k: [] for k in rows}
    cpus: dict[str, list[float]] = {k: [] for k in rows}
    colorize: dict[str, list[float]] = {k: [] for k in rows}
    found = {}
    for name, opts in rows.items():                 # warm: models loaded, one run each
        found[name] = len(pipe.run(src, opts).instances)
    for _ in range(reps):
        for name, opts in rows.items():
            t, c = time.perf_counter(), time.process_time()
            res = pipe.run(src, opts)
            times[name].append(time.perf_counter() - t)
            cpus[name].append(time.process_time() - c)
            colorize[name].append(res.timings.get("colorize", float("nan")))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"photo 1024×683 gray, default preset, {found['eccv16']} objects (biased random R101), warm, median of "
          f"{reps}; {load_line()}", flush=True)
    for name in rows:
        print(f"  {name:13s} {med[name]:6.2f} s/image wall (min {min(times[name]):.2f}), {min(cpus[name]):.2f} CPU-s, "
              f"colorize step {statistics.median(colorize[name]):.2f} s", flush=True)
    for name in rows:
        if name != "eccv16":
            print(f"  ratio {name} / eccv16: {med[name] / med['eccv16']:.2f} (median wall), "
                  f"{min(times[name]) / min(times['eccv16']):.2f} (min wall), "
                  f"{min(cpus[name]) / min(cpus['eccv16']):.2f} (min CPU-s)", flush=True)


def bench_bf16(paths: dict[str, Path], reps: int) -> None:
    """``--precision fast`` where the CPU runs bf16 natively: 512² per input, bf16 autocast against fp32 (time and
    max |Δab| relative to max |ab|)."""
    from patchcolor.colorizers.ddcolor import random_gray_batch
    from patchcolor.precision import autocast, fast_precision

    fast = fast_precision(torch.device("cpu"))
    if fast is None:
        print("bf16: not native on this CPU (skipped)")
        return
    x = random_gray_batch(1, 512, seed=2)
    for variant, path in paths.items():
        model = load(path)
        with torch.inference_mode():
            want = model(x)
            with autocast(torch.device("cpu"), fast):
                got = model(x).float()
            runs = {p: [] for p in ("fp32", fast)}
            for _ in range(reps):
                runs["fp32"].append(timed(lambda: model(x)))
                with autocast(torch.device("cpu"), fast):
                    runs[fast].append(timed(lambda: model(x)))
        rel = float((got - want).abs().max() / want.abs().max())
        print(f"{fast} {variant} 512²: " + ", ".join(f"{p} {min(w for w, _ in r):.2f} s ({min(c for _, c in r):.2f} "
                                                     f"CPU-s)" for p, r in runs.items())
              + f"; max |Δab| {rel:.1e} of max |ab|; {load_line()}", flush=True)
        del model


def bench_preview(cache: Path, paths: dict[str, Path], reps: int) -> None:
    """The preview's first draft of a 6000×4000 layer (a fresh session each time, warm models, 4 objects) with each
    colorizer: the dialog's first look (goal: <= 1.5 s)."""
    from patchcolor.options import make_options
    from patchcolor.preview import PreviewSession

    src, pipe = photo_and_pipeline(cache, paths, 6000)
    names = {"eccv16": "eccv16", "tiny": "ddcolor-tiny", "large": "ddcolor"}
    for key in ["eccv16", *paths]:
        opts = make_options("default", max_instances=4, colorizer=names[key])
        PreviewSession(pipe, src).render(opts, draft=True)          # warm: models loaded
        times = []
        for _ in range(reps):
            session = PreviewSession(pipe, src)
            t = time.perf_counter()
            shown = session.render(opts, draft=True)
            times.append(time.perf_counter() - t)
        print(f"preview draft 6000×4000, {names[key]:12s}: {statistics.median(times):.2f} s (min {min(times):.2f}), "
              f"{shown.instances} objects; {load_line()}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "patchcolor-bench-ddcolor")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--photo-reps", type=int, default=3)
    ap.add_argument("--skip-large", action="store_true", help="DDColor-T only")
    ap.add_argument("--only", choices=["forward", "changes", "crops", "bf16", "rss", "preview", "photo"],
                    action="append")
    ap.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        rss_child(args.rss_child)
        return
    from patchcolor.precision import cpu_report

    rate, rate_cpu = matmul_rate()
    print(f"{cpu_report().line()}; torch {torch.__version__}, {torch.get_num_threads()} threads; fp32 matmul "
          f"{rate:.0f} GFLOP/s wall, {rate_cpu:.0f} GFLOP/CPU-s (2048², best of 5); {load_line()}", flush=True)
    only = set(args.only or ["forward", "changes", "crops", "bf16", "rss", "preview", "photo"])
    variants = ["tiny"] if args.skip_large else ["tiny", "large"]
    paths = {v: weights(args.cache, v) for v in variants}
    if "forward" in only:
        for v in variants:
            bench_forward(paths[v], v, args.reps)
    if "changes" in only:
        bench_changes(paths["tiny"], args.reps)
    if "crops" in only:
        bench_crops(paths["tiny"], args.reps)
    if "bf16" in only:
        bench_bf16(paths, args.reps)
    if "rss" in only:
        for v in variants:
            bench_rss(paths[v], v)
    if "preview" in only:
        bench_preview(args.cache, paths, args.photo_reps)
    if "photo" in only:
        bench_photo(args.cache, paths, args.photo_reps)
    rate, rate_cpu = matmul_rate()
    print(f"matmul again at the end: {rate:.0f} GFLOP/s wall, {rate_cpu:.0f} GFLOP/CPU-s; {load_line()}")


if __name__ == "__main__":
    main()
