"""``patchcolor`` command line: colorize files and folders, serve GIMP, make CURVE keys, check weights."""
from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

from .errors import BadOptions, PatchColorError
from .options import PRESETS, make_options

log = logging.getLogger("patchcolor")


def add_colorize_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("colorize", help="colorize image files and folders",
                       description="Colorize every image given (files and folders). Existing outputs are skipped "
                                   "unless --overwrite, so an interrupted run resumes where it stopped.")
    p.add_argument("inputs", nargs="+", type=Path, metavar="IN", help="image files and/or folders")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="output folder")
    p.add_argument("--preset", choices=sorted(PRESETS), default="default",
                   help="seed: the PatchColorization method as written (≤1280 px output, hard masks); "
                        "default: full resolution, feathered masks (default)")
    from .registry import registry   # the one list of model names

    models = registry()
    p.add_argument("--colorizer", choices=models.choices("colorizer"),
                   help="colorization network (default eccv16; " + ", ".join(
                       f"{m.name}: {m.label}" for m in models.models if m.kind == "colorizer") + ")")
    p.add_argument("--detector", choices=models.choices("detector"),
                   help="object detector (default r101; none: whole image only)")
    from .device import DEVICES, device_arg

    p.add_argument("--device", default="auto", type=device_arg, metavar="{" + ",".join(DEVICES) + "}",
                   help="auto (default: an NVIDIA/AMD GPU, else an Apple GPU, else the CPU), cpu, cuda[:N] or mps")
    p.add_argument("--precision", choices=["fp32", "fast", "bf16", "fp16"],
                   help="fp32 (default, the paper's arithmetic); fast: bf16 where this CPU/GPU runs it natively "
                        "(AVX512-BF16/AMX, ~3.5x faster), else fp32 with a note; check it on your photos with "
                        "`patchcolor check-precision`")
    p.add_argument("--max-side", type=int, help="long side of the working copy (default 1280)")
    p.add_argument("--saturation", type=float, help="saturation gain (1 = unchanged)")
    p.add_argument("--feather", type=float, help="mask feathering, fraction of the object's size (0 = hard)")
    p.add_argument("--score-thresh", type=float, help="detector score threshold (default 0.3)")
    p.add_argument("--max-instances", type=int, help="at most this many objects (default 100)")
    p.add_argument("--masks", action="store_true", help="also write one mask PNG per detected object")
    p.add_argument("--format", choices=["png", "tiff"], default="png",
                   help="output file type; 16-bit inputs give 16-bit outputs in both")
    p.add_argument("--overwrite", action="store_true", help="redo images whose output exists")
    p.add_argument("--suffix", default="", metavar="TEXT",
                   help="appended to output names (e.g. _color); required when OUT is (inside) an input folder")
    p.add_argument("--overlap", choices=["auto", "on", "off"], default="auto",
                   help="decode/encode neighbouring images while the networks run: auto (default) = on where a core "
                        "is free for it (GPU, remote backend, or more cores than torch threads), off otherwise")
    p.add_argument("--recursive", action="store_true", help="descend into sub-folders")
    p.add_argument("--max-pixels", type=float, default=250e6, help="refuse larger images (default 250e6)")
    p.add_argument("--models", type=Path, help="weights folder (default: models/ or $PATCHCOLOR_MODELS)")
    p.add_argument("--colorizer-weights", type=Path, metavar="PATH",
                   help="read the --colorizer's weights from PATH instead of the weights folder: a file or a model "
                        "folder (DDColor: a Hugging Face folder with model.safetensors or pytorch_model.bin and "
                        "config.json, or ModelScope's pytorch_model.pt); local runs only")
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run on Ray (pip install 'patchcolor[ray]'): auto (the running cluster), ray://HOST:10001, "
                        "or nothing (a local Ray for this run); OUT and the inputs must be on storage every node sees")
    p.add_argument("--ray-cpus-per-worker", type=float, default=1.0, metavar="N",
                   help="with --ray and no GPUs: CPUs (torch threads) per colorizing actor (default 1)")
    try:
        from .service.remote import add_remote_arguments
        add_remote_arguments(p)
    except ImportError:  # pragma: no cover - service package always ships
        pass
    from .hint_files import add_hint_arguments
    add_hint_arguments(p)
    p.set_defaults(func=cmd_colorize)
    return p


def _overlap(args: argparse.Namespace) -> bool:
    if args.overlap != "auto":
        return args.overlap == "on"
    from . import batch

    if getattr(args, "remote", None) or getattr(args, "ray", None):
        return batch.auto_overlap(networks_on_cpu=False)
    from .device import resolve_device

    return batch.auto_overlap(networks_on_cpu=resolve_device(args.device).type == "cpu")


def _precision(args: argparse.Namespace) -> str | None:
    """--precision, with "fast" resolved for this machine (one line said when it falls back to fp32)."""
    if getattr(args, "precision", None) != "fast":
        return getattr(args, "precision", None)
    from .device import resolve_device
    from .precision import resolve_fast

    precision, note = resolve_fast(resolve_device(getattr(args, "device", "auto")),
                                   remote=bool(getattr(args, "remote", None)))
    if note:
        print(note, file=sys.stderr)
    return precision


# the numeric options make_options does not check: (lowest, highest); NaN and infinities are refused as well
NUMBER_RANGES = {"max_pixels": (64, 1e12), "ray_cpus_per_worker": (0.01, 1024), "remote_timeout": (0.1, 86400)}


def check_numbers(args: argparse.Namespace) -> None:
    """A non-finite or out-of-range numeric option -> ValueError, one sentence (exit status 2)."""
    for dest, (lo, hi) in NUMBER_RANGES.items():
        v = getattr(args, dest, None)
        if v is not None and not (math.isfinite(v) and lo <= v <= hi):
            raise ValueError(f"--{dest.replace('_', '-')} must be a number from {lo:g} to {hi:g} (got {v:g})")


def _options(args: argparse.Namespace):
    overrides = dict(colorizer=args.colorizer, detector=args.detector, precision=_precision(args),
                     max_side=args.max_side, saturation=args.saturation, score_thresh=args.score_thresh,
                     max_instances=args.max_instances)
    if args.feather is not None:
        overrides.update(feather=args.feather, fusion="feather" if args.feather > 0 else "paper")
    return make_options(args.preset, **overrides)


def plan_from_args(args: argparse.Namespace):
    """The batch plan of ``colorize`` (local and --ray alike): notes logged, stale temporary files of interrupted
    runs removed. None (after one error line) when no image was found."""
    from . import batch

    plan = batch.plan_batch(args.inputs, args.output, fmt=args.format, suffix=getattr(args, "suffix", "") or "",
                            overwrite=args.overwrite, masks=args.masks, recursive=args.recursive)
    for note in plan.notes:
        log.warning("%s", note)
    if not plan.items and not plan.done:
        log.error("no images found in %s", ", ".join(map(str, args.inputs)))
        return None
    removed = batch.clean_stale_tmp(plan.out_dir)
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted run", removed)
    return plan


def cmd_colorize(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from . import batch

    from .heap import keep_freed_memory
    from .hint_files import hint_options, hint_runner

    check_numbers(args)
    colorizer_weights(args)
    keep_freed_memory()     # one image's freed feature maps are reused for the next (bench/bench_heap.py)
    if getattr(args, "ray", None):
        if getattr(args, "hints", None) is not None:
            raise BadOptions("--hints is not supported with --ray yet: run without --ray")
        return cmd_colorize_ray(args)
    opts = hint_options(_options(args), args)
    plan = plan_from_args(args)
    if plan is None:
        return 1
    batch.install_sigterm_cleanup()
    runner = None
    hints_for = hint_runner(args, len(plan.items) + len(plan.done))   # {} or {"hints": map} per input

    def run(src, item):
        nonlocal runner
        if runner is None:
            runner = _runner(args)
        return runner(src, opts, **hints_for(item.src))

    bar = tqdm(total=len(plan.items) + len(plan.done), unit="img", disable=None)

    def on_outcome(o: batch.ItemOutcome) -> None:
        bar.update(1)
        bar.set_postfix_str(o.item.src.name[-30:])
        if o.line():
            tqdm.write(o.line(), file=sys.stderr)

    try:
        summary = batch.run_batch(plan, run, max_pixels=int(args.max_pixels), overlap=_overlap(args),
                                  on_outcome=on_outcome, pass_item=True)
    except SystemExit:
        bar.close()
        print("terminated: temporary files removed; run again to resume", file=sys.stderr)
        raise
    bar.close()
    print(summary.line(plan.out_dir), file=sys.stderr)
    return 0 if summary.ok else 1


def cmd_colorize_ray(args: argparse.Namespace) -> int:
    """``colorize ... --ray [ADDRESS]``: plan as locally, run on Ray (cluster.py), print the local summary line."""
    from . import cluster

    if getattr(args, "remote", None):
        raise BadOptions("--ray and --remote cannot be combined: the Ray workers run the models themselves")
    opts = _options(args)
    settings = cluster.RaySettings(None if args.ray in ("", "local") else args.ray,
                                   float(getattr(args, "ray_cpus_per_worker", None) or 1.0),
                                   getattr(args, "ray_workers", None))
    plan = plan_from_args(args)
    if plan is None:
        return 1

    def say(o) -> None:
        if o.line():
            print(o.line(), file=sys.stderr, flush=True)
    summary = cluster.colorize_on_ray(plan, opts, settings, models=args.models, device=args.device,
                                      max_pixels=int(args.max_pixels), on_outcome=say)
    print(summary.line(plan.out_dir), file=sys.stderr)
    return 0 if summary.ok else 1


def _runner(args: argparse.Namespace):
    """The local pipeline (models loaded once) or the remote service, as one callable (src, opts) -> Result."""
    if getattr(args, "remote", None):
        from .service.remote import run_remote_colorize

        return lambda src, opts, **kw: run_remote_colorize(args.remote, src, opts, server_key=args.server_key,
                                                           client_key=args.client_key,
                                                           timeout_s=args.remote_timeout, **kw)   # kw: hints
    from .pipeline import Pipeline

    pipe = Pipeline(args.models, device=args.device, max_pixels=int(args.max_pixels),
                    colorizer_weights=colorizer_weights(args))
    return pipe.run


def colorizer_weights(args: argparse.Namespace) -> dict[str, Path]:
    """{colorizer: path} of ``--colorizer-weights`` (BadOptions: no --colorizer, no such path, or a run that is
    not local)."""
    path = getattr(args, "colorizer_weights", None)
    if path is None:
        return {}
    if not args.colorizer:
        raise BadOptions("--colorizer-weights needs --colorizer to say which network the file is for "
                         "(e.g. --colorizer ddcolor).")
    if getattr(args, "remote", None) or getattr(args, "ray", None):
        raise BadOptions("--colorizer-weights is read by a local run only: put the file in the backend's weights "
                         "folder under its model-zoo name instead.")
    if not path.exists():
        raise BadOptions(f"--colorizer-weights {path} does not exist.")
    return {args.colorizer: path}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="patchcolor", description="Instance-aware colorization of B&W photos.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    add_colorize_parser(sub)
    from .service.commands import add_keys_parser, add_serve_parser

    add_serve_parser(sub)
    add_keys_parser(sub)
    from .service.userservice import add_service_parser

    add_service_parser(sub)
    add_check_precision_parser(sub)
    from .weights import add_weights_parser

    add_weights_parser(sub)
    from .evaluate import add_evaluate_parser

    add_evaluate_parser(sub)
    return parser


def add_check_precision_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("check-precision", help="compare bf16 (or Winograd) with fp32 on your photos (PSNR, "
                                               "detections)",
                       description="Colorize each image in fp32 and in the 'fast' precision (bf16; fp16 on GPUs "
                                   "without bf16) and print the PSNR between the two outputs and how many "
                                   "detections agree (IoU > 0.5, same class). Where bf16 is not native (this CPU "
                                   "runs it ~100x slower), its rounding is simulated in fp32 kernels: the accuracy "
                                   "figures hold, the timings are not bf16's.")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    p.add_argument("--preset", choices=sorted(PRESETS), default="default")
    from .device import DEVICES, device_arg

    p.add_argument("--device", default="auto", type=device_arg, metavar="{" + ",".join(DEVICES) + "}",
                   help="auto (default), cpu, cuda[:N] or mps")
    p.add_argument("--max-side", type=int, help="long side of the working copy (default 1280)")
    p.add_argument("--max-instances", type=int, help="at most this many objects (default 100)")
    p.add_argument("--max-pixels", type=float, default=250e6, help="refuse larger images (default 250e6)")
    p.add_argument("--simulate", action="store_true", help="simulate bf16 rounding even where it is native")
    p.add_argument("--winograd", action="store_true",
                   help="instead: compare the Winograd 3x3 convolutions (NNPACK; the default on AVX2 CPUs, see "
                        "PATCHCOLOR_WINOGRAD) with direct ones (oneDNN), both fp32, on the CPU")
    p.add_argument("--models", type=Path, help="weights folder (default: models/ or $PATCHCOLOR_MODELS)")
    p.set_defaults(func=cmd_check_precision)
    return p


def cmd_check_precision(args: argparse.Namespace) -> int:
    import math

    from . import winograd
    from .device import device_line, resolve_device
    from .io import load_image
    from .pipeline import Pipeline
    from .precision import compare_precision, cpu_report, fast_precision, modules_of, simulate_bf16

    check_numbers(args)
    opts = make_options(args.preset, max_side=args.max_side, max_instances=args.max_instances, precision="fp32")
    device = resolve_device(args.device)
    fast = fast_precision(device)
    simulate = args.simulate or fast is None
    label, ref_label = f"{fast or 'bf16'}{'-sim' if simulate else ''}", "fp32"
    if args.winograd:
        if device.type != "cpu" or not winograd.nnpack_available():
            print(f"error: --winograd compares CPU convolutions and needs NNPACK in torch; device {device}, NNPACK "
                  f"{'available' if winograd.nnpack_available() else 'not available'}.", file=sys.stderr)
            return 2
        label, ref_label = "winograd", "direct"
        print(cpu_report().line() + f"; device {device}; comparing Winograd 3x3 convolutions (NNPACK) with direct "
              "ones (oneDNN), fp32")
    else:
        print(device_line(device) + f"; comparing {label} with fp32"
              + (" (bf16 simulated: fp32 kernels with bf16 rounding; timings are not bf16's)" if simulate else ""))
    def pipeline() -> Pipeline:
        return Pipeline(args.models, device=args.device, max_pixels=int(args.max_pixels))

    ref = pipeline()
    if args.winograd:
        other, fast_opts = pipeline(), opts
        for pipe, on in ((ref, False), (other, True)):
            with winograd.policy_override(on):      # the models are built (and stay) with or without Winograd
                pipe.colorizer(opts.colorizer)
                if opts.detector != "none":
                    pipe.detector(opts.detector)
    elif simulate:
        other = pipeline()
        models = [other.colorizer(opts.colorizer)] + ([other.detector(opts.detector)] if opts.detector != "none"
                                                       else [])
        for m in models:
            for mod in modules_of(m):
                simulate_bf16(mod)
        fast_opts = opts
    else:
        other, fast_opts = ref, make_options(args.preset, max_side=args.max_side, max_instances=args.max_instances,
                                             precision=fast)
    rows, failed = [], 0
    for path in args.images:
        try:
            src = load_image(path, int(args.max_pixels))
            c = compare_precision(path.name, lambda s: ref.run(s, opts), lambda s: other.run(s, fast_opts), src)
        except PatchColorError as e:
            print(f"error: {path}: {e.message}", file=sys.stderr)
            failed += 1
            continue
        rows.append(c)
        print(f"{path.name}: PSNR {c.psnr_db:.1f} dB, detections {ref_label} {c.n_ref} / {label} {c.n_fast}, "
              f"{c.matched} matched (IoU>0.5, same class), {ref_label} {c.seconds_ref:.2f} s, {label} "
              f"{c.seconds_fast:.2f} s")
    if rows:
        finite = [r.psnr_db for r in rows if math.isfinite(r.psnr_db)]
        mean = sum(finite) / len(finite) if finite else float("inf")
        agree = sum(r.matched for r in rows) / max(1, sum(max(r.n_ref, r.n_fast) for r in rows))
        print(f"{len(rows)} image(s): mean PSNR {mean:.1f} dB, detection agreement {agree:.0%}"
              + ("" if any(max(r.n_ref, r.n_fast) for r in rows) else " (no detections)"))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except PatchColorError as e:
        print(f"error: {e.message}", file=sys.stderr)
        if e.details:
            log.debug("%s", e.details)
        return 1
    except ValueError as e:           # bad option values (make_options)
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
