"""Preview benchmark (prints figures; asserts nothing): PreviewSession on a 6000×4000 layer, warm models.

Random official-format weights (tests/fake_colorizers.py, a biased random R101 from tests/fake_r101.py so it
finds objects), max_instances 4, CPU, fp32. Rows, in the order a dialog produces them:

    open      PreviewSession(...) on the 24 MP layer: the 384 px proxy (cv2 INTER_AREA)
    draft     first render with draft=True on a fresh session: detector and networks on the proxy with the
              draft parameters of patchcolor/preview.py (DRAFT_*), fuse, finish (median of --reps sessions)
    first     first exact render (after the draft, which shares nothing with it): working copy, detector,
              networks (full image + each crop), fuse, finish
    draft>ex  draft=True again now that the exact detections are cached: the exact preview (draft False)
    option    a saturation / feather / order change: fuse + finish on the proxy only (the warm case)
    hint      a colour hint painted inside one object: the full image and that crop through SIGGRAPH17
    hint-move the hint moved: the same inputs again
    hint-drft the hint moved, draft=True: a draft (the exact preview would run networks) on the exact preview's
              objects: the full image and the crops holding the hint at the draft's net size, the rest reused
    same      the last request again (all cached)
    digest    what the service adds per preview request to find the session (blake2b of the frame)

Goal: a preview of the 24 MP layer <= 1.5 s warm (models loaded) on this 2-core CPU. Printed for
the first look at an image (open + draft, and open + first exact) and for the refresh ("option").

Objects: how many of the exact preview's objects each draft shows (same class, IoU > 0.5 in proxy
pixels). ``--draft-sides 256,384,...`` adds one row per detector side: the first draft's time (median of --reps
fresh sessions) and its objects against the exact preview's.

    .venv/bin/python bench/bench_preview.py [--reps 3] [--side 384] [--draft-side 256 --draft-proposals 300 ...]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "backend"))


def make_layer(h: int = 4000, w: int = 6000) -> np.ndarray:
    """A 24 MP gray photo (scikit-image's astronaut, bilinear upscale)."""
    import cv2
    from skimage import data
    from skimage.color import rgb2gray

    base = (rgb2gray(data.astronaut()) * 255).astype(np.uint8)
    return cv2.resize(base, (w, h), interpolation=cv2.INTER_LINEAR)


def hint_map(w: int, h: int, box: tuple[float, float, float, float], rgb=(40, 60, 230)):
    """A transparent (h, w) hint map with one dab at the centre of ``box`` (proxy pixels)."""
    from patchcolor.prepare import SourceImage

    m = np.zeros((h, w, 4), np.uint8)
    cx, cy = int((box[0] + box[2]) / 2), int((box[1] + box[3]) / 2)
    m[max(0, cy - 2):cy + 2, max(0, cx - 2):cx + 2] = (*rgb, 255)
    return SourceImage(np.ascontiguousarray(m[..., :3]), np.ascontiguousarray(m[..., 3]))


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def matched(draft, exact) -> str:
    """'k of n': the exact preview's objects that the draft shows (same class, IoU > 0.5)."""
    k = sum(1 for ce, _, be in exact.objects if any(cd == ce and iou(bd, be) > 0.5 for cd, _, bd in draft.objects))
    return f"{k} of {len(exact.objects)}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3, help="repetitions of each warm row (median printed)")
    ap.add_argument("--side", type=int, default=384, help="proxy long side")
    ap.add_argument("--max-instances", type=int, default=4)
    ap.add_argument("--draft-side", type=int, help="override preview.DRAFT_DETECTOR_SIDE (to measure another)")
    ap.add_argument("--draft-proposals", type=int, help="override preview.DRAFT_PROPOSALS")
    ap.add_argument("--draft-objects", type=int, help="override preview.DRAFT_OBJECTS")
    ap.add_argument("--draft-sides", default="", help="comma-separated detector sides to compare (first draft)")
    ap.add_argument("--draft-net", type=int, help="override preview.DRAFT_NET_SIZE (multiple of 8, >= 64)")
    args = ap.parse_args()

    import torch

    from fake_colorizers import write_colorizer_pth
    from fake_r101 import write_r101_pkl
    from patchcolor.options import make_options
    from patchcolor.pipeline import Pipeline
    from patchcolor.precision import cpu_report
    from patchcolor.prepare import SourceImage
    from patchcolor import preview
    from patchcolor.preview import PreviewSession

    for name, value in (("DRAFT_DETECTOR_SIDE", args.draft_side), ("DRAFT_PROPOSALS", args.draft_proposals),
                        ("DRAFT_OBJECTS", args.draft_objects), ("DRAFT_NET_SIZE", args.draft_net)):
        if value is not None:
            setattr(preview, name, value)
    print(f"draft: detector side {preview.DRAFT_DETECTOR_SIDE}, {preview.DRAFT_PROPOSALS} proposals, "
          f"<= {preview.DRAFT_OBJECTS} objects, net {preview.DRAFT_NET_SIZE}")

    cpu = cpu_report()
    print(f"CPU: {cpu.model}, {cpu.cores} cores, {cpu.isa}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as d:
        models = Path(d)
        write_colorizer_pth("eccv16", models, seed=1)
        write_colorizer_pth("siggraph17", models, seed=2)
        write_r101_pkl(models / "model_final_a3ec72.pkl", seed=3, bias_class=0)
        pipe = Pipeline(models, device="cpu")
        opts = make_options("default", colorizer="siggraph17", max_instances=args.max_instances)
        t = time.perf_counter()
        pipe.colorizer("siggraph17"), pipe.detector(opts.detector)
        warm_src = SourceImage(make_layer(480, 640))
        pipe.run(warm_src, opts)                                   # load + warm up every model
        print(f"models loaded and warmed: {time.perf_counter() - t:.1f} s")

        src = SourceImage(make_layer())
        rows: list[tuple[str, float, str]] = []
        opens, drafts, cpus = [], [], []
        for _ in range(args.reps):          # each a first look: a fresh session (the first also meets new shapes)
            t = time.perf_counter()
            session = PreviewSession(pipe, src, long_side=args.side)
            opens.append(time.perf_counter() - t)
            c0 = time.process_time()
            draft = session.render(opts, draft=True)
            cpus.append(time.process_time() - c0)
            drafts.append(draft.timings["total"])
        rows.append(("open", statistics.median(opens), f"proxy {session.proxy.width}x{session.proxy.height}"))
        rows.append(("draft", statistics.median(drafts),
                     f"draft={draft.draft}; {draft.instances} objects, {draft.computed} network inputs; "
                     + ", ".join(f"{k} {v:.2f}" for k, v in draft.timings.items() if k != "total")
                     + f"; min {min(drafts):.2f} max {max(drafts):.2f} s; CPU time {statistics.median(cpus):.2f} s "
                     f"(fresh session each time)"))
        first = session.render(opts)
        rows.append(("first", first.timings["total"],
                     f"{first.instances} objects, {first.computed} network inputs; "
                     + ", ".join(f"{k} {v:.2f}" for k, v in first.timings.items() if k != "total")
                     + f"; the draft showed {matched(draft, first)} of its objects"))
        again = session.render(opts, draft=True)
        rows.append(("draft>ex", again.timings["total"], f"draft={again.draft}; {again.computed} network inputs"))

        def timed(label: str, make, note: str = "") -> None:
            times, pv = [], None
            for r in range(args.reps):
                o, hints = make(r)
                t0 = time.perf_counter()
                pv = session.render(o, hints=hints)
                times.append(time.perf_counter() - t0)
            rows.append((label, statistics.median(times),
                         f"{pv.computed} network inputs; min {min(times):.3f} max {max(times):.3f} s {note}"))

        timed("option", lambda r: (make_options("default", colorizer="siggraph17", max_instances=args.max_instances,
                                                saturation=1.1 + 0.1 * r, feather=0.03 + 0.01 * r), None),
              "(saturation/feather changed each time)")
        # the hint sits in the first object; the proxy-size hint map is what the dialog sends
        sx = session.proxy.width / src.width
        box = first_box = (0.0, 0.0, float(src.width), float(src.height))
        if first.instances:
            res_box = session._found[next(k for k in session._found if k[0] != "draft")][0].box   # working px
            wsx = session.proxy.width / session._work[opts.max_side].shape[1]
            box = tuple(v * wsx for v in res_box)
        else:
            box = tuple(v * sx for v in first_box)
        pw, ph = session.proxy.width, session.proxy.height
        colours = [(40, 60, 230), (230, 40, 40), (40, 200, 60), (200, 200, 40)]
        timed("hint", lambda r: (opts, hint_map(pw, ph, box, colours[r % 4])), "(hint colour changed each time)")
        def moved(r: int) -> tuple[float, ...]:
            """The dab moved 3, 6, ... proxy pixels toward the proxy's centre (it must stay in the image)."""
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            dx = 3 * (r + 1) * (1 if cx < pw / 2 else -1)
            dy = 3 * (r + 1) * (1 if cy < ph / 2 else -1)
            return box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy

        timed("hint-move", lambda r: (opts, hint_map(pw, ph, moved(r), colours[0])), "(hint moved each time)")
        times, pv = [], None
        for r in range(args.reps):          # what the dialog asks first after a hint change: a draft
            t0 = time.perf_counter()
            pv = session.render(opts, hints=hint_map(pw, ph, moved(r + args.reps), colours[1]), draft=True)
            times.append(time.perf_counter() - t0)
        rows.append(("hint-drft", statistics.median(times), f"draft={pv.draft}; {pv.computed} network inputs; "
                     f"hint moved each time, draft=True; {matched(pv, first)} exact objects shown"))
        timed("same", lambda r: (opts, hint_map(pw, ph, box, colours[0])))
        from patchcolor.service.preview_cache import image_digest
        frame = np.ascontiguousarray(src.color).tobytes()
        t = time.perf_counter()
        image_digest(frame, src.width, src.height, "gray8")
        rows.append(("digest", time.perf_counter() - t, "the service's per-request image digest (24 MP gray8; "
                     "x4 for rgba8)"))
        for side in (int(v) for v in args.draft_sides.split(",") if v):
            setattr(preview, "DRAFT_DETECTOR_SIDE", side)
            times, pv = [], None
            for _ in range(args.reps):
                pv = PreviewSession(pipe, src, long_side=args.side).render(opts, draft=True)
                times.append(pv.timings["total"])
            rows.append((f"side {side}", statistics.median(times),
                         f"first draft, detector side {side}: segment {pv.timings.get('segment', 0):.2f} s; "
                         f"{pv.instances} objects, {matched(pv, first)} of the exact's shown"))
        print(f"{'row':10s} {'seconds':>8s}  notes")
        for label, s, note in rows:
            print(f"{label:10s} {s:8.3f}  {note}")
        print(f"cache: {session.nbytes / 2**20:.1f} MiB held by the session; "
              f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} (other processes share the CPU)")
        secs = dict((label, s) for label, s, _ in rows)
        for what, t in (("first look, draft (open + draft)", secs["open"] + secs["draft"]),
                        ("first look, exact (open + first)", secs["open"] + secs["first"]),
                        ("refresh (option)", secs["option"])):
            print(f"goal <= 1.5 s: {what:34s} {t:7.3f} s  {'met' if t <= 1.5 else 'NOT met'}")


if __name__ == "__main__":
    main()
