"""Step 4 — colorize: the colorizer networks, loaded once, run in batches.

``load_colorizer`` builds a colorizer and loads its official weights strictly and safely: ECCV16 / SIGGRAPH17
(Zhang et al.) from their ``.pth`` state_dict (``weights_only=True``, every key and shape; files with or without
``num_batches_tracked`` are accepted), DDColor from any of its published formats (:mod:`.ddcolor`).
Each network brings its :class:`~.inputs.InputSpec` (:func:`input_spec`): the input preparation and input size
the pipeline uses for the full image and each crop. ``predict_ab`` turns a list of network inputs (and, for
SIGGRAPH17, colour hints) into a/b maps, inputs of one size batched together, chunked to bound memory.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import WeightsCorrupt
from ..hints import HintTensors
from ..precision import autocast
from ..progress import forward_progress
from ..registry import corrupt_error, missing_error, registry
from ..winograd import use_winograd, winograd_enabled
from .ddcolor import DDColorColorizer, need_package
from .eccv16 import ECCVGenerator  # noqa: F401 (re-exported; the registry builds it by name)
from .inputs import LIGHTNESS, InputSpec
from .siggraph17 import SIGGRAPHGenerator

NET_SIZE = 256  # the options' default net_size: the Zhang networks' input side (the paper's stretch)
#: colorizer name -> network class, from the model registry's builders (no second list of names)
ARCHITECTURES: dict[str, type[torch.nn.Module]] = {
    name: registry().model(name).build_target() for name in registry().names("colorizer")}


def input_spec(name: str) -> InputSpec:
    """The input preparation and sizes of colorizer ``name`` (known without loading its weights)."""
    return getattr(registry().model(name, "colorizer").build_target(), "input_spec", LIGHTNESS)


def load_colorizer(name: str, path: Path, device: torch.device, winograd: bool | None = None) -> torch.nn.Module:
    """Build colorizer ``name`` (the registry's builder) and load its official weights from ``path`` (a file;
    for DDColor also a Hugging Face / ModelScope model folder); eval mode, no grad, on ``device``; its 3×3
    convolutions on large maps through NNPACK's Winograd when ``winograd`` (None:
    :func:`patchcolor.winograd.winograd_enabled` for ``device``, i.e. AVX2 CPUs).
    Raises BadOptions (unknown name), PatchColorError (DDColor's optional package absent) or the registry's
    WeightsMissing / WeightsCorrupt (naming the file and the repair)."""
    target = registry().model(name, "colorizer").build_target()
    path = Path(path)
    if hasattr(target, "from_file"):        # DDColor: the file says which variant it is
        need_package()
        if not path.exists():
            raise missing_error(name, path.parent)
        try:
            model = target.from_file(path)
        except WeightsCorrupt as e:
            raise corrupt_error(name, path, e.message) from None
    else:
        model = _load_state_dict_model(name, target(), path)
    model.eval().requires_grad_(False)
    if winograd_enabled(device) if winograd is None else winograd:
        use_winograd(model)
    return model.to(device)


def _load_state_dict_model(name: str, model: torch.nn.Module, path: Path) -> torch.nn.Module:
    """``model`` with the state_dict of ``path`` (weights_only, strict except ``num_batches_tracked``)."""
    if not path.is_file():
        raise missing_error(name, path.parent)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, truncated zip, non-tensor objects refused by weights_only
        raise corrupt_error(name, path, f"{type(e).__name__}: {e}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    try:
        check_state_dict(model, state, path)
    except WeightsCorrupt as e:
        raise corrupt_error(name, path, e.message) from None
    model.load_state_dict(state, strict=False)  # strictness already enforced (num_batches_tracked is optional)
    return model


def check_state_dict(model: torch.nn.Module, state: object, path: Path) -> None:
    """Exact keys and shapes, except that ``*.num_batches_tracked`` may be absent. Raises WeightsCorrupt with the
    reason only (:func:`load_colorizer` words the user's message through the registry)."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsCorrupt("it is not a state_dict of tensors")
    expected = {k: v.shape for k, v in model.state_dict().items()}
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(state) - optional)
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if state[k].shape != expected[k])
    if missing or unexpected or wrong:
        parts = [f"{label}: {', '.join(keys[:4])}{' …' if len(keys) > 4 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
        raise WeightsCorrupt(f"it does not match the {type(model).__name__} network: {'; '.join(parts)}")


def chunks(n: int, size: int) -> Iterator[slice]:
    for i in range(0, n, size):
        yield slice(i, min(n, i + size))


def predict_ab(model: torch.nn.Module, inputs: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]],
               precision: str = "fp32", batch_size: int = 8, on_batch=None,
               hints: Sequence[HintTensors | None] | None = None) -> list[np.ndarray]:
    """Colorize a list of network inputs.

    inputs:   each the model's input (its :class:`~.inputs.InputSpec`): (C, n, n) float32, or (n, n) for a
              one-channel L* input (ECCV16 / SIGGRAPH17: L* in [0, 100]; DDColor: (3, n, n) gray RGB in [0, 1]).
              Inputs of one shape run together, in chunks of ``batch_size``, in the order first seen.
    sizes:    each (h, w): the a/b map is resized to it (bilinear, align_corners=False, as PatchColorization's code).
    hints:    SIGGRAPH17 only: per input None or (a/b (2, n, n) float32 raw Lab, mask (1, n, n) float32 {0, 1})
              at the input's resolution (the network's ``input_B`` / ``mask_B``). A batch in which no input has
              hints runs exactly as automatic mode; in a batch with some, the others get zero a/b and mask,
              which is what automatic mode feeds.
    Returns a list of (2, h, w) float32 a/b maps, in the order of ``inputs``. ``on_batch(done, total)`` is called
    at the start of each block of the network's forward (``done`` a float: the inputs before the chunk plus the
    chunk's share of the forward done, :func:`patchcolor.progress.forward_progress`) and after each chunk (``done``
    an int); all are progress and cancellation points.
    """
    if hints is not None and any(h is not None for h in hints) and not isinstance(model, SIGGRAPHGenerator):
        raise ValueError("colour hints need the siggraph17 colorizer")
    device = next(model.parameters()).device
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, x in enumerate(inputs):
        groups.setdefault(tuple(x.shape), []).append(i)
    out: list[np.ndarray | None] = [None] * len(inputs)
    done = 0
    with torch.inference_mode():
        for members in groups.values():
            for sl in chunks(len(members), batch_size):
                ids = members[sl]
                x = torch.from_numpy(np.stack([inputs[i] for i in ids])).to(device)
                if x.ndim == 3:
                    x = x[:, None]
                given = [hints[i] for i in ids] if hints is not None else []
                inside = None if on_batch is None else (
                    lambda f, _label, a=done, k=len(ids): on_batch(a + f * k, len(inputs)))
                with autocast(device, precision), forward_progress(model, inside):
                    if any(h is not None for h in given):
                        ab_in = x.new_zeros(x.shape[0], 2, *x.shape[2:])
                        mask_in = x.new_zeros(x.shape)
                        for j, h in enumerate(given):
                            if h is not None:
                                ab_in[j], mask_in[j] = torch.from_numpy(h[0]), torch.from_numpy(h[1])
                        ab = model(x, ab_in, mask_in)
                    else:
                        ab = model(x)
                ab = ab.float()
                for j, i in enumerate(ids):
                    item = ab[j:j + 1]
                    if tuple(sizes[i]) != tuple(item.shape[2:]):
                        item = F.interpolate(item, size=tuple(sizes[i]), mode="bilinear", align_corners=False)
                    out[i] = item[0].cpu().numpy()
                done += len(ids)
                if on_batch is not None:
                    on_batch(done, len(inputs))
    return out  # type: ignore[return-value]
