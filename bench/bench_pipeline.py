"""Pipeline benchmark (prints figures; asserts nothing). Random official-format weights, biased detector.

Cases: a 1280×960 photo-like image with 8 objects (detector biased, max_instances=8) and a 24 MP (6000×4000)
input, each in fp32 and bf16, each in its own process (so peak RSS is that case's own). Models are loaded and
warmed once, then a second, timed run is measured. Reported: wall time per stage, time inside the network
forwards vs outside, peak RSS, FLOP rate inside each network vs torch's own fp32/bf16 matmul rate on this
machine, and bf16 vs fp32 (speed, same detections, PSNR). FLOPs are counted as direct convolutions, so where the
CPU line says "conv Winograd" (patchcolor.winograd) the rates are equivalent rates and may exceed the matmul rate.

On a CPU without native bf16 kernels (no AVX512-BF16/AMX) a bf16 job would take hours and the pipeline runs
fp32 instead (patchcolor/precision.py), so there the bf16 rows are "bf16-sim": fp32 kernels with every
convolution/linear layer's weights, inputs and outputs rounded to bf16 as autocast does. They measure what bf16
does to the output (PSNR, detections), not its speed; the bf16 kernel rate is printed beside them.

    .venv/bin/python bench/bench_pipeline.py            # all cases
    .venv/bin/python bench/bench_pipeline.py --case small --precision fp32 --json out.json   # one case
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def matmul_rate(dtype: torch.dtype, n: int = 2048, reps: int = 6) -> float:
    """GFLOP/s of torch's own n×n matmul on this machine (best of ``reps``)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


class ForwardTimer:
    """Accumulates wall time spent inside a module's forward (pre/post hooks) and its FLOPs (once)."""

    def __init__(self, module: torch.nn.Module):
        self.seconds = 0.0
        self.calls = 0
        self._t0 = 0.0
        module.register_forward_pre_hook(self._pre)
        module.register_forward_hook(self._post)

    def _pre(self, *_):
        self._t0 = time.perf_counter()

    def _post(self, *_):
        self.seconds += time.perf_counter() - self._t0
        self.calls += 1


def find_module(obj) -> torch.nn.Module:
    if isinstance(obj, torch.nn.Module):
        return obj
    for v in vars(obj).values():
        if isinstance(v, torch.nn.Module):
            return v
    raise TypeError(f"no nn.Module inside {obj!r}")


def make_image(case: str) -> np.ndarray:
    from skimage import data
    from skimage.color import rgb2gray
    from skimage.transform import resize

    base = rgb2gray(data.astronaut())
    h, w = (960, 1280) if case == "small" else (4000, 6000)
    return (resize(base, (h, w), order=1, anti_aliasing=False) * 255).astype(np.uint8)


def kernel_rates() -> dict[str, float]:
    """GFLOP/s of one 256→256 3×3 convolution on a 32×32 map, fp32 and bf16 (inference mode)."""
    conv = torch.nn.Conv2d(256, 256, 3, padding=1).eval()
    x = torch.rand(1, 256, 32, 32)
    flop = 2 * 256 * 256 * 9 * 32 * 32
    rates = {}
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        c, xi = conv.to(dt), x.to(dt)
        with torch.inference_mode():
            c(xi)
            t = time.perf_counter()
            c(xi)
            rates[name] = flop / (time.perf_counter() - t) / 1e9
    return rates


def run_case(case: str, precision: str, models: Path) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from patchcolor import winograd
    from patchcolor.options import make_options
    from patchcolor.pipeline import Pipeline
    from patchcolor.precision import simulate_bf16
    from patchcolor.prepare import SourceImage

    pipe = Pipeline(models, device="cpu")
    src = SourceImage(make_image(case))
    sim = precision == "bf16-sim"
    opts = make_options("default", max_instances=8, precision="fp32" if sim else precision)
    col = find_module(pipe.colorizer(opts.colorizer))
    det = find_module(pipe.detector(opts.detector))
    if sim:
        simulate_bf16(col)
        simulate_bf16(det)
    pipe.run(src, opts)                                   # load models + warm up
    timers = {"colorizer": ForwardTimer(col), "detector": ForwardTimer(det)}
    t = time.perf_counter()
    res = pipe.run(src, opts)
    wall = time.perf_counter() - t
    # the reference rate, taken in this process right after the timed run (the machine's speed drifts)
    matmul = matmul_rate(torch.float32) if not sim and precision == "fp32" else None
    network_s = {k: v.seconds for k, v in timers.items()}
    inside = sum(network_s.values())
    # FLOPs of the same forwards, counted on a separate run (counting slows execution)
    flops, by_module = {"total": 0}, {}
    if not sim:
        saved, winograd.MIN_PIXELS = winograd.MIN_PIXELS, 1 << 62   # counted as direct convolutions (the counter
        try:                                                         # does not see NNPACK): rates are equivalent
            with FlopCounterMode(display=False) as fc:
                pipe.run(src, opts)
        finally:
            winograd.MIN_PIXELS = saved
        by_module = fc.get_flop_counts()
        flops["total"] = fc.get_total_flops()
    return {
        "case": case, "precision": precision, "size": [src.width, src.height], "wall_s": wall,
        "stages_s": res.timings, "network_s": network_s,
        "outside_network_s": wall - inside, "outside_frac": (wall - inside) / wall,
        "flops_total": flops["total"],
        "flops": {"detector": sum(by_module.get(type(det).__name__, {}).values()),
                  "colorizer": sum(by_module.get(type(col).__name__, {}).values())},
        "matmul_gflops": matmul,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "instances": [(i.class_name, round(i.score, 4), [round(b, 1) for b in i.box]) for i in res.instances],
        "image": res.image,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", choices=["small", "24mp"])
    ap.add_argument("--precision", choices=["fp32", "bf16", "bf16-sim"])
    ap.add_argument("--cases", default="small,24mp", help="comma-separated cases to run (all-case mode)")
    ap.add_argument("--models", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.case:   # one case in this process
        r = run_case(args.case, args.precision, args.models)
        np.save(args.out.with_suffix(".npy"), r.pop("image"))
        args.out.write_text(json.dumps(r))
        return
    from fake_colorizers import write_colorizer_pth
    from fake_r101 import write_r101_pkl

    tmp = Path(tempfile.mkdtemp(prefix="pc-bench-"))
    write_colorizer_pth("eccv16", tmp)
    write_r101_pkl(tmp / "model_final_a3ec72.pkl", seed=3, bias_class=0)
    from patchcolor.precision import effective_precision

    native = effective_precision(torch.device("cpu"), "bf16")[0] == "bf16"
    rates = {"fp32": matmul_rate(torch.float32)}
    if native:   # emulated, a 2048² bf16 matmul takes about a minute: not worth timing
        rates["bf16"] = matmul_rate(torch.bfloat16)
    conv = kernel_rates()
    bf16_mm = f"{rates['bf16']:.1f} GFLOP/s" if native else "not timed (emulated)"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; matmul 2048²: "
          f"fp32 {rates['fp32']:.1f} GFLOP/s, bf16 {bf16_mm}; 3×3 conv: "
          f"fp32 {conv['fp32']:.1f} GFLOP/s, bf16 {conv['bf16']:.1f} GFLOP/s", flush=True)
    low = "bf16" if native else "bf16-sim"
    if not native:
        print(f"no native bf16 kernels on this CPU (bf16 conv runs at {conv['bf16'] / conv['fp32']:.3f}x the fp32 "
              "rate): --precision bf16 runs fp32 here, so the bf16 rows are bf16-sim (bf16 rounding at every "
              "conv/linear layer on fp32 kernels): output quality only, no speed-up to measure", flush=True)
    cases = args.cases.split(",")
    results = {}
    for case in cases:
        for prec in ("fp32", low):
            out = tmp / f"{case}-{prec}.json"
            subprocess.run([sys.executable, __file__, "--case", case, "--precision", prec, "--models", str(tmp),
                            "--out", str(out)], check=True)
            r = json.loads(out.read_text())
            r["image"] = np.load(out.with_suffix(".npy"))
            results[case, prec] = r
            net = r["network_s"]
            print(f"\n== {case} {r['size'][0]}x{r['size'][1]} {prec}: wall {r['wall_s']:.2f} s, "
                  f"{len(r['instances'])} objects, peak RSS {r['peak_rss_mb']:.0f} MB")
            print("   stages: " + ", ".join(f"{k} {v:.2f}s" for k, v in r["stages_s"].items()))
            print(f"   inside networks: detector {net['detector']:.2f}s, colorizer {net['colorizer']:.2f}s; "
                  f"outside {r['outside_network_s']:.2f}s = {100 * r['outside_frac']:.1f}% of wall (target <= 10%)")
            for name in ("detector", "colorizer"):
                g, key = r["flops"][name], name
                if g and net[key] > 0:
                    rate = g / net[key] / 1e9
                    print(f"   {name}: {g / 1e9:.0f} GFLOP in {net[key]:.2f}s = {rate:.1f} GFLOP/s = "
                          f"{100 * rate / (r['matmul_gflops'] or rates[prec]):.0f}% of the {prec} matmul rate "
                          f"({r['matmul_gflops'] or rates[prec]:.1f} GFLOP/s, "
                          f"{'same process, right after' if r['matmul_gflops'] else 'at start'})", flush=True)
    for case in cases:
        a, b = results[case, "fp32"], results[case, low]
        mse = np.mean((a["image"].astype(np.float64) - b["image"].astype(np.float64)) ** 2)
        psnr = 10 * np.log10(255 ** 2 / mse) if mse else float("inf")
        side = max(a["size"])
        matched = sum(any(x[0] == y[0] and max(abs(p - q) for p, q in zip(x[2], y[2])) <= 0.005 * side
                          for y in b["instances"]) for x in a["instances"])
        scores = [x[1] for x in a["instances"]]
        same = (f"{matched}/{len(a['instances'])} boxes match within 0.5 % of the long side, "
                f"{len(b['instances'])} found (fp32 scores span {min(scores, default=0):.4f}-{max(scores, default=0):.4f})")
        speed = f"speed-up {a['wall_s'] / b['wall_s']:.2f}x (target >= 1.7x)" if native else "speed-up not measurable"
        print(f"\n{case}: {low} {speed}, PSNR vs fp32 {psnr:.1f} dB (target >= 40); detections: {same}")


if __name__ == "__main__":
    main()
