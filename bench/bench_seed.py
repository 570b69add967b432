"""The seed's own per-image code path, re-enacted on CPU, against ours: per-image seconds and the ratios seed/ours
in one run on one machine (prints figures, asserts nothing).

"Seed" here means PatchColorization's published code (moziada/PatchColorization, the project this one started
from), which ``--preset seed`` reproduces; the package's code calls that method "paper" (``fusion="paper"``). No
random seed is meant.

Same photo and weights as bench/bench_batch.py (its ``make_photo`` and ``fake_models``): scikit-image's coffee,
1024×683 gray, written N times as PNG; random ECCV16 + biased R101 weights in the official formats.

Rows, after the CPU line:
* ``seed``: the re-enactment below, per image (median of N), with its stages;
* ``pipeline``: our ``Pipeline.run`` with ``--preset seed`` (fp32), warm (models loaded, one warm-up run first),
  decoded image in, array out (no decode/encode);
* ``cli``: ``patchcolor colorize --preset seed`` as a subprocess on 1 and on N copies, warm per image
  (t_N − t_1)/(N − 1): decode, run, PNG encode. The CLI process keeps freed heap memory for the next image
  (patchcolor.heap); this bench process, which runs the seed and pipeline rows, keeps the system's malloc
  settings, as the seed's own process does;
* the ratios seed / pipeline and seed / cli (> 1: ours is faster).
The seed rows and the pipeline rows alternate image by image, so a change of machine load hits both.

What is re-enacted (moziada/PatchColorization @ a77a73b, ``colorize_folder.py`` + ``util.py``; reference
seed-and-models.md §1.2, §1.3), step by step, for every image:
1. ``read_to_pil``: PIL open, the 2-D array stacked 3× into an RGB PIL image; the >1280 resize check.
2. ``detector``: a NEW predictor each image: build Mask R-CNN R101-FPN and load ``model_final_a3ec72.pkl``
   (the seed builds ``DefaultPredictor(cfg)`` per call); input = ``pil_to_gray_np``: skimage float64 rgb2lab,
   a = b = 0, lab2rgb × 255; score / NMS thresholds 0.3 / 0.3; then the detection cache ``pickle.dump``.
3. ``instancesMasks``: a float64 (N, H, W) stack of {0, 255} masks, each from a full-image bool mask.
4. int32-truncated boxes and the > 0.001·W·H box-area filter (``segnificat_bboexes_indices``).
5. ECCV16 on the full image, then on each unpadded box crop, ONE FORWARD AT A TIME (batch 1), fp32, without
   ``torch.no_grad()`` (the parameters require grad, so autograd records each forward, as in the seed): PIL
   BICUBIC stretch to 256², skimage float64 L*, ``torch.Tensor``, bilinear (align_corners=False) back to size.
   ECCV16 itself is loaded once per run, as ``colorize_folder.py`` does (not timed).
6. ``patchFullimg`` per instance in score order: a full-size copy, hard overwrite inside the full-image mask.
7. ``postprocess``: skimage float64 rgb2lab L* + the ab, float64 ``lab2rgb``, then ``desaturate`` (rgb2gray of
   the input, w(Y) = −2.5Y² + 2.5Y + 0.375, skimage rgb2hsv / hsv2rgb); ``save_img``: img_as_ubyte, JPEG q=100.
8. ``gc.collect()`` (folder mode does it every image).

How it differs from the real seed code (which cannot run here: detectron2 has no wheels for this torch / CPU):
* the detector is our torchvision port of the same checkpoint (patchcolor.segment.r101: same architecture,
  same arithmetic up to float rounding) built the plain way (NCHW, FrozenBN as its own pass, as Detectron2 runs
  on CPU; ``--seed-fast-detector``: our folded-BN channels_last build). Two of its parts are still ours and
  faster than Detectron2's: ROIAlign split over threads, and masks pasted into per-box windows (Detectron2 pastes
  N full-image masks; step 3 then builds the full-image masks from the windows). Its input is cast to float32
  before the 800-px resize (Detectron2 resizes the float64 array, then casts): same pixels to ~1e-6.
* the detection list is cut to the first ``--max-instances`` (default 4) BEFORE steps 3-5: the biased random
  detector returns 100 objects, a trained one finds ~4 on this photo (the issue's count), and our rows keep 4
  too. So the float64 mask stack, the cache pickle and the crops are those of a 4-object photo.
* the seed's caching of detections across runs is not used (every image is new, as in a first run).
* CPU instead of ``.cuda()``; torch's threads are the same for every row.
* the seed's convolutions are PyTorch's default (oneDNN); ours take NNPACK's Winograd for large-map 3×3
  convolutions where patchcolor.winograd's policy turns it on (AVX2 CPUs; the CPU line says which).
Arithmetic reused from the project where it is the seed's: patchcolor.colorizers (ECCV16 + official .pth
loader), patchcolor.segment (R101 loader via the registry, ``filter_instances``), patchcolor.fuse (``paper``
mode, one call per instance), patchcolor.finish.desaturation_weight; skimage for all colour conversions.

    .venv/bin/python bench/bench_seed.py --n 3
"""
from __future__ import annotations

import argparse
import gc
import os
import pickle
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_batch import fake_models, make_photo  # noqa: E402  (also puts tests/ on sys.path)

SEED_STAGES = ("read", "build+load", "detect", "cache", "masks", "filter", "eccv16", "fuse", "post", "save", "gc")


class Laps:
    """Seconds per named stage of one image (perf_counter laps)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._t
        self._t = now


class SeedReenactment:
    """The seed's per-image path (see the module docstring). ``colorize_image(path, out)`` -> stage seconds.

    models: weights folder; max_instances: detections kept (first, score order); fast_detector: our folded-BN
    channels_last R101 build instead of the plain one."""

    def __init__(self, models: Path, max_instances: int, fast_detector: bool = False) -> None:
        import torch

        from patchcolor.colorizers import load_colorizer
        from patchcolor.models import weight_path

        self.models, self.max_instances, self.fast_detector = models, max_instances, fast_detector
        # colorize_folder.py: eccv16(pretrained=True).eval(), once; its parameters keep requires_grad=True
        self.eccv16 = load_colorizer("eccv16", weight_path("eccv16", models), torch.device("cpu"), winograd=False)
        self.eccv16.requires_grad_(True)

    def _detector(self):
        """A new R101-FPN predictor with the checkpoint loaded (the seed builds one per image)."""
        import torch

        from patchcolor.registry import registry
        from patchcolor.segment.r101 import R101Detector

        path = self.models / registry().model("r101", "detector").weights.file
        if self.fast_detector:
            return R101Detector(path, torch.device("cpu"), winograd=False)
        return R101Detector(path, torch.device("cpu"), fold_bn=False, channels_last=False, winograd=False)

    def _colorize(self, pil_img) -> np.ndarray:
        """``preprocess`` -> ECCV16 (batch 1, autograd on) -> ``scaleback_ab_tens``: (2, h, w) float32 a/b."""
        import torch
        import torch.nn.functional as F
        from skimage import color

        h, w = pil_img.size[1], pil_img.size[0]
        small = np.asarray(pil_img.resize((256, 256), resample=3))          # 3 = BICUBIC
        tens = torch.Tensor(color.rgb2lab(small)[:, :, 0])[None, None]      # float64 L* -> float32 (1,1,256,256)
        ab = self.eccv16(tens).cpu()
        ab = F.interpolate(ab, size=(h, w), mode="bilinear")
        return ab.detach().numpy()[0]

    def colorize_image(self, path: Path, out_stem: Path) -> dict[str, float]:
        from PIL import Image
        from skimage import color, img_as_ubyte, io

        from patchcolor.finish import desaturation_weight
        from patchcolor.fuse import FuseItem, fuse
        from patchcolor.segment import filter_instances
        from patchcolor.segment.base import DetectorSettings

        t = Laps()
        img = Image.open(path)                                               # read_to_pil
        arr = np.asarray(img)
        if arr.ndim == 2:
            img = Image.fromarray(np.stack([arr, arr, arr], axis=-1))
        if max(img.size) > 1280:                                             # resize_large_img
            w, h = img.size
            img = img.resize((1280, int(1280 * h / w)) if w > h else (int(1280 * w / h), 1280), resample=3)
        w, h = img.size
        rgb_u8 = np.asarray(img)
        t.lap("read")

        det = self._detector()                                               # DefaultPredictor(cfg) + weights
        t.lap("build+load")
        lab = color.rgb2lab(rgb_u8)                                          # pil_to_gray_np: float64
        lab[:, :, 1:] = 0
        gray = color.lab2rgb(lab) * 255
        found = det.detect(gray.astype(np.float32), DetectorSettings(0.3, 0.3, 100, "fp32"))
        found = found[: self.max_instances]                                  # see the docstring
        del det
        t.lap("detect")

        full_masks = []
        for inst in found:                                                   # Detectron2's pred_masks: full image
            m = np.zeros((h, w), bool)
            mh, mw = inst.mask.shape
            x, y = inst.mask_origin
            m[y:y + mh, x:x + mw] = inst.binary_mask()
            full_masks.append(m)
        with open(out_stem, "wb") as f:                                      # the detection cache
            pickle.dump({"pred_boxes": np.array([i.box for i in found], np.float32).reshape(-1, 4),
                         "pred_masks": np.stack(full_masks) if full_masks else np.zeros((0, h, w), bool),
                         "scores": np.array([i.score for i in found], np.float32),
                         "pred_classes": np.array([i.class_id for i in found], np.int64)}, f)
        t.lap("cache")
        masks = np.zeros((len(found), h, w))                                 # instancesMasks: float64 N×H×W
        for i, m in enumerate(full_masks):
            masks[i] = m.astype(np.uint8) * 255
        t.lap("masks")
        kept = filter_instances(found, w, h, 0.001, len(found))              # int32 boxes, area > 0.1 %
        index = [next(k for k, f in enumerate(found) if f is inst) for inst in kept]
        boxes = [tuple(int(v) for v in np.asarray(inst.box, np.float32).astype(np.int32)) for inst in kept]
        t.lap("filter")

        full_ab = self._colorize(img)                                        # full image, then each crop
        inst_ab = [self._colorize(img.crop(b)) for b in boxes]
        t.lap("eccv16")
        for k, b, ab in zip(index, boxes, inst_ab):                          # patchFullimg, score order
            full_ab = fuse(full_ab, [FuseItem(np.array(masks[k], dtype=bool), (0, 0), ab, b)], mode="paper",
                           order="score")
        t.lap("fuse")

        l_star = color.rgb2lab(rgb_u8)[:, :, 0:1]                            # postprocess, float64
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)                     # negative Z values clipped
            rgb = color.lab2rgb(np.concatenate([l_star, full_ab.transpose(1, 2, 0)], axis=2))
        hsv = color.rgb2hsv(rgb)                                             # desaturate
        hsv[:, :, 1] *= desaturation_weight(color.rgb2gray(rgb_u8))
        rgb = color.hsv2rgb(hsv)
        t.lap("post")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)                   # skimage 0.25: plugin keyword
            io.imsave(str(out_stem) + ".jpg", img_as_ubyte(rgb), quality=100, check_contrast=False)   # save_img
        t.lap("save")
        gc.collect()
        t.lap("gc")
        return t.seconds


def cli_per_image(models: Path, inputs: Path, n: int, tmp: Path, max_instances: int) -> tuple[float, float]:
    """``patchcolor colorize --preset seed`` on 1 and on n copies: ((t_n − t_1)/(n − 1), t_1) seconds."""
    one = tmp / "one"
    one.mkdir(exist_ok=True)
    shutil.copy(sorted(inputs.iterdir())[0], one / "p.png")
    env = dict(os.environ, PATCHCOLOR_MODELS=str(models))
    t = {}
    for name, folder in (("1", one), ("n", inputs)):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "patchcolor.cli", "colorize", str(folder), "-o", str(tmp / f"cli-{name}"),
                        "--preset", "seed", "--device", "cpu", "--max-instances", str(max_instances)],
                       env=env, check=True, capture_output=True)
        t[name] = time.perf_counter() - t0
    return (t["n"] - t["1"]) / (n - 1), t["1"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=3, help="images per row (default 3; at least 2 for the CLI row)")
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--max-instances", type=int, default=4, help="objects per image, every row (default 4)")
    ap.add_argument("--models", type=Path, help="weights folder (default: random official-format weights)")
    ap.add_argument("--seed-fast-detector", action="store_true",
                    help="seed row: our folded-BN channels_last R101 build instead of the plain one")
    ap.add_argument("--no-cli", action="store_true", help="skip the CLI row")
    args = ap.parse_args()
    n = max(2, args.n)

    import torch
    from PIL import Image

    from patchcolor.io import load_image
    from patchcolor.options import make_options
    from patchcolor.pipeline import Pipeline
    from patchcolor.precision import cpu_report

    cpu = cpu_report().line()
    print(cpu, flush=True)
    tag = f"[{cpu}, torch threads {torch.get_num_threads()}]"
    tmp = Path(tempfile.mkdtemp(prefix="pc-bench-seed-"))
    models = args.models or fake_models(Path(tempfile.gettempdir()) / "patchcolor-bench-models")
    inputs = tmp / "in"
    inputs.mkdir()
    photo = make_photo(args.width)
    paths = [inputs / f"p{k}.png" for k in range(n)]
    for p in paths:
        Image.fromarray(photo).save(p)
    print(f"{tag} {n} x {photo.shape[1]}x{photo.shape[0]} gray PNG, max {args.max_instances} objects, "
          f"seed detector {'folded channels_last' if args.seed_fast_detector else 'plain NCHW'}, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)

    seed = SeedReenactment(models, args.max_instances, args.seed_fast_detector)
    pipe = Pipeline(models, device="cpu")
    opts = make_options("seed", max_instances=args.max_instances)
    src = load_image(paths[0], 10**9)
    pipe.run(src, opts)                                                  # warm-up: models, first-call shapes
    (tmp / "seed-out").mkdir()
    seed_times, seed_stages, pipe_times, pipe_stages = [], [], [], []
    for k, p in enumerate(paths):                                        # alternate: seed image, our image
        t0 = time.perf_counter()
        seed_stages.append(seed.colorize_image(p, tmp / "seed-out" / p.stem))
        seed_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        r = pipe.run(src, opts)
        pipe_times.append(time.perf_counter() - t0)
        pipe_stages.append(r.timings)
        print(f"{tag} image {k + 1}/{n}: seed {seed_times[-1]:.3f} s, pipeline {pipe_times[-1]:.3f} s", flush=True)

    s_img, p_img = statistics.median(seed_times), statistics.median(pipe_times)
    med = {k: statistics.median(s.get(k, 0.0) for s in seed_stages) for k in SEED_STAGES}
    print(f"{tag} seed      {s_img:.3f} s/img (median of {n})  "
          + " ".join(f"{k} {v:.3f}" for k, v in med.items()), flush=True)
    pmed = {k: statistics.median(s.get(k, 0.0) for s in pipe_stages)
            for k in ("prepare", "segment", "colorize", "fuse", "finish")}
    print(f"{tag} pipeline  {p_img:.3f} s/img (median of {n}, warm, --preset seed)  "
          + " ".join(f"{k} {v:.3f}" for k, v in pmed.items()), flush=True)
    print(f"{tag} ratio seed / pipeline = {s_img / p_img:.3f}", flush=True)
    if not args.no_cli:
        c_img, t1 = cli_per_image(models, inputs, n, tmp, args.max_instances)
        print(f"{tag} cli       {c_img:.3f} s/img warm ((t{n} - t1)/{n - 1}); t1 {t1:.2f} s (start-up + model "
              f"load + 1 image)", flush=True)
        print(f"{tag} ratio seed / cli = {s_img / c_img:.3f}   cli / pipeline = {c_img / p_img:.3f}", flush=True)
    print(f"{tag} load average {os.getloadavg()[0]:.1f}", flush=True)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
