"""The finish step alone at 24 MP (6000×4000) for each input kind (prints figures; asserts nothing).

    .venv/bin/python bench/bench_finish.py [--width 6000 --height 4000]

Random pixels and a random 1280×853 a/b map (σ = 10, a few per cent of the colours out of gamut), the default
preset (keep-L finish, the paper's desaturation curve). Best of 3, wall time, all cores.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from patchcolor.finish import finish
from patchcolor.options import DEFAULT


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=6000)
    ap.add_argument("--height", type=int, default=4000)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    h, w = args.height, args.width
    ab = rng.standard_normal((2, round(1280 * h / w), 1280)).astype(np.float32) * 10
    for name, dtype, shape in (("gray 8-bit", np.uint8, (h, w)), ("RGB 8-bit", np.uint8, (h, w, 3)),
                               ("gray 16-bit", np.uint16, (h, w)), ("RGB 16-bit", np.uint16, (h, w, 3))):
        img = rng.integers(0, np.iinfo(dtype).max + 1, shape, dtype=dtype)
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            finish(img, None, ab, DEFAULT, np.dtype(dtype))
            best = min(best, time.perf_counter() - t)
        print(f"{name:12s} {w}x{h}: finish {best:.2f} s ({best / (w * h) * 1e9:.0f} ns per pixel)")


if __name__ == "__main__":
    main()
