"""glibc's default malloc vs ``patchcolor.heap.keep_freed_memory()`` on warm ``Pipeline.run`` (prints figures,
asserts nothing). Seed preset, a 1024×683 gray photo (scikit-image's coffee, bench_batch.make_photo), random
official-format weights (bench_batch.fake_models: biased R101 that finds objects, at most 4).

The allocator policy is process-wide, so each measurement is a fresh subprocess (models loaded, one warm-up run,
then N timed runs); the two policies alternate for R rounds so that a load change on the machine hits both.
Per policy: seconds per image, minor page faults and system CPU seconds per image, peak RSS (VmHWM), RSS after
the runs and (keep) after ``release_memory()``; then the ratio of the per-image times.

    .venv/bin/python bench/bench_heap.py            # R=2 rounds of N=3 runs: about 2-3 minutes on 2 cores
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

POLICIES = ("system", "keep")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def child(policy: str, n: int, width: int, max_instances: int) -> None:
    """One process: ``policy`` set first, then warm runs; prints one JSON line."""
    from patchcolor import heap

    kept = heap.keep_freed_memory() if policy == "keep" else False
    from bench_batch import fake_models, make_photo
    from PIL import Image

    from patchcolor.io import load_image
    from patchcolor.options import make_options
    from patchcolor.pipeline import Pipeline

    models = fake_models(Path(tempfile.gettempdir()) / "patchcolor-bench-models")
    with tempfile.TemporaryDirectory(prefix="pc-bench-heap-") as tmp:
        p = Path(tmp) / "coffee.png"
        Image.fromarray(make_photo(width)).save(p)
        src = load_image(p, 10**9)
    pipe = Pipeline(models, device="cpu")
    opts = make_options("seed", max_instances=max_instances)
    pipe.run(src, opts)                          # warm-up: models loaded, first-run allocations done
    secs, faults, sys_s = [], [], []
    for _ in range(n):
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        pipe.run(src, opts)
        secs.append(time.perf_counter() - t0)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        faults.append(r1.ru_minflt - r0.ru_minflt)
        sys_s.append(r1.ru_stime - r0.ru_stime)
    rss_after = _rss_bytes()
    heap.release_memory()
    print(json.dumps({"policy": policy, "kept": kept, "secs": secs, "faults": faults, "sys": sys_s,
                      "peak": _hwm_bytes(), "rss_after": rss_after, "rss_released": _rss_bytes()}), flush=True)


def run_child(policy: str, args: argparse.Namespace) -> dict:
    env = dict(os.environ)
    env.pop("PATCHCOLOR_MALLOC", None)
    cmd = [sys.executable, __file__, "--child", policy, "--n", str(args.n), "--width", str(args.width),
           "--max-instances", str(args.max_instances)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if r.returncode != 0:
        raise SystemExit(f"{policy} run failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2, help="alternations system/keep (default 2)")
    ap.add_argument("--n", type=int, default=3, help="timed runs per process (default 3)")
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--max-instances", type=int, default=4)
    ap.add_argument("--child", choices=POLICIES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.n, args.width, args.max_instances)
        return

    import torch

    from patchcolor.precision import cpu_report

    cpu = cpu_report().line() + f", torch threads {torch.get_num_threads()}"
    print(f"[{cpu}] seed preset, {args.width}px coffee, warm Pipeline.run: {args.rounds} round(s) x {args.n} "
          f"run(s) per policy, load average {os.getloadavg()[0]:.1f}", flush=True)
    got: dict[str, list[dict]] = {p: [] for p in POLICIES}
    for r in range(args.rounds):
        for policy in (POLICIES if r % 2 == 0 else POLICIES[::-1]):
            d = run_child(policy, args)
            got[policy].append(d)
            print(f"  round {r + 1} {policy:6s}: " + " ".join(f"{s:.2f}" for s in d["secs"]) + " s/image, faults "
                  + " ".join(str(f) for f in d["faults"]) + f", sys {statistics.mean(d['sys']):.3f} s", flush=True)
    mib = 1 << 20
    mean_s = {}
    for policy in POLICIES:
        ds = got[policy]
        secs = [s for d in ds for s in d["secs"]]
        mean_s[policy] = statistics.mean(secs)
        extra = (f", after release_memory {statistics.mean(d['rss_released'] for d in ds) / mib:.0f} MiB"
                 if policy == "keep" else "")
        print(f"[{cpu}] {policy:6s} malloc: {mean_s[policy]:.3f} s/image (min {min(secs):.3f}, n={len(secs)}), "
              f"{statistics.mean(f for d in ds for f in d['faults']):.0f} minor faults/image, "
              f"sys {statistics.mean(s for d in ds for s in d['sys']):.3f} s/image, "
              f"peak RSS {statistics.mean(d['peak'] for d in ds) / mib:.0f} MiB, "
              f"RSS after the runs {statistics.mean(d['rss_after'] for d in ds) / mib:.0f} MiB{extra}"
              + ("" if policy == "system" or all(d["kept"] for d in ds) else " (NOT in effect on this system)"),
              flush=True)
    print(f"[{cpu}] keep_freed_memory: {mean_s['system'] / mean_s['keep']:.3f}x "
          f"(system s/image / keep s/image; time per image {100 * (mean_s['keep'] / mean_s['system'] - 1):+.1f} %)")


if __name__ == "__main__":
    main()
