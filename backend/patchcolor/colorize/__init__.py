"""Step 4 — colorize: the Zhang et al. networks, loaded once, run in batches.

``load_colorizer`` builds the network and loads the official ``.pth`` state_dict with ``weights_only=True``
and a strict key/shape check (files with or without ``num_batches_tracked`` are accepted).
``predict_ab`` turns a list of 256×256 L* inputs (and, for SIGGRAPH17, colour hints) into a/b maps, chunked to
bound memory.
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
from ..registry import corrupt_error, missing_error, registry
from ..winograd import use_winograd, winograd_enabled
from .eccv16 import ECCVGenerator  # noqa: F401 (re-exported; the registry builds it by name)
from .siggraph17 import SIGGRAPHGenerator

NET_SIZE = 256  # both networks see 256×256 inputs (the seed's stretch)
#: colorizer name -> network class, from the model registry's builders (no second list of names)
ARCHITECTURES: dict[str, type[torch.nn.Module]] = {
    name: registry().model(name).build_target() for name in registry().names("colorizer")}


def load_colorizer(name: str, path: Path, device: torch.device, winograd: bool | None = None) -> torch.nn.Module:
    """Build colorizer ``name`` (the registry's builder) and load its official state_dict from ``path``; eval
    mode, no grad, on ``device``; its 3×3 convolutions on large maps through NNPACK's Winograd when
    ``winograd`` (None: :func:`patchcolor.winograd.winograd_enabled` for ``device``, i.e. AVX2 CPUs).
    Raises BadOptions (unknown name) or the registry's WeightsMissing / WeightsCorrupt (file, folder and the
    exact install command)."""
    model = registry().model(name, "colorizer").build_target()()
    path = Path(path)
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
    model.eval().requires_grad_(False)
    if winograd_enabled(device) if winograd is None else winograd:
        use_winograd(model)
    return model.to(device)


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


def predict_ab(model: torch.nn.Module, l_inputs: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]],
               precision: str = "fp32", batch_size: int = 8, on_batch=None,
               hints: Sequence[HintTensors | None] | None = None) -> list[np.ndarray]:
    """Colorize a batch of lightness maps.

    l_inputs: each (256, 256) float32 L* in [0, 100].
    sizes:    each (h, w): the a/b map is resized to it (bilinear, align_corners=False, as the seed).
    hints:    SIGGRAPH17 only: per input None or (a/b (2, n, n) float32 raw Lab, mask (1, n, n) float32 {0, 1})
              at the input's resolution (the network's ``input_B`` / ``mask_B``). A batch in which no input has
              hints runs exactly as automatic mode; in a batch with some, the others get zero a/b and mask,
              which is what automatic mode feeds.
    Returns a list of (2, h, w) float32 a/b maps. ``on_batch(done, total)`` is called after each chunk
    (progress and cancellation point).
    """
    if hints is not None and any(h is not None for h in hints) and not isinstance(model, SIGGRAPHGenerator):
        raise ValueError("colour hints need the siggraph17 colorizer")
    device = next(model.parameters()).device
    out: list[np.ndarray] = []
    with torch.inference_mode():
        for sl in chunks(len(l_inputs), batch_size):
            x = torch.from_numpy(np.stack(l_inputs[sl])[:, None]).to(device)
            given = hints[sl] if hints is not None else []
            with autocast(device, precision):
                if any(h is not None for h in given):
                    ab_in = x.new_zeros(x.shape[0], 2, *x.shape[2:])
                    mask_in = x.new_zeros(x.shape)
                    for i, h in enumerate(given):
                        if h is not None:
                            ab_in[i], mask_in[i] = torch.from_numpy(h[0]), torch.from_numpy(h[1])
                    ab = model(x, ab_in, mask_in)
                else:
                    ab = model(x)
            ab = ab.float()
            for i, (h, w) in zip(range(ab.shape[0]), sizes[sl]):
                item = ab[i:i + 1]
                if (h, w) != tuple(item.shape[2:]):
                    item = F.interpolate(item, size=(h, w), mode="bilinear", align_corners=False)
                out.append(item[0].cpu().numpy())
            if on_batch is not None:
                on_batch(len(out), len(l_inputs))
    return out
