"""Read a Detectron2 model-zoo ``.pkl`` safely and map it onto torchvision's Mask R-CNN names.

The model-zoo file (``model_final_a3ec72.pkl``) is ``pickle`` data (``encoding="latin1"``) holding
``{"model": {detectron2 key: numpy.ndarray float32}, "__author__": "Detectron2 Model Zoo"}``.
``pickle`` can run arbitrary code, so :class:`RestrictedUnpickler` resolves only the few globals
numpy arrays and plain containers need; anything else raises :class:`WeightsCorrupt` before it runs.

:func:`convert_to_torchvision` then builds a torchvision state_dict for the target model, one
target key at a time (so every expected key is checked for presence and shape):

* key renaming (reference §4.3 item 6, torchvision 0.29 names: ``inner_blocks.{i}.0``,
  ``layer_blocks.{i}.0``, ``rpn.head.conv.0.0``, ``mask_head.{i}.0``);
* class layout ``num_classes=81`` with background at index 0 (item 5): ``cls_score`` rows
  ``[80, 0..79]``; ``bbox_pred`` gets 4 zero rows in front; the mask predictor a zero channel 0;
* ``conv1`` input channels flipped BGR -> RGB (item 2, option (a): the model is fed RGB);
* FrozenBN ``running_mean``/``running_var`` filled with 0/1 when the file lacks them (item 3);
* ``cell_anchors``, ``pixel_mean``, ``pixel_std`` and any other unused key are dropped.
"""
from __future__ import annotations

import pickle
import pickletools
import re
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import WeightsCorrupt, WeightsMissing

VERIFY_HINT = "run `patchcolor weights fetch`, which checks the weight files and downloads damaged ones again"


def _latin1_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """Stand-in for ``_codecs.encode``: protocol-2 pickles store ``bytes`` as ``encode(str, "latin1")``.

    Only the latin-1 round trip is allowed (other codecs, e.g. zlib, are refused)."""
    if encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "iso88591") or not isinstance(obj, str):
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}")
    return obj.encode("latin-1", errors)


def _no_size(name: str, make: Callable[..., Any]) -> Callable[..., Any]:
    """``bytes``/``bytearray`` that refuse an integer argument: ``bytearray(3_000_000_000)`` from a few pickle
    bytes would allocate 3 GB before anything could be checked (a checkpoint only ever passes data)."""
    def build(*args: Any) -> Any:
        if args and not isinstance(args[0], (str, bytes, bytearray)):
            raise pickle.UnpicklingError(f"refused {name}() of a {type(args[0]).__name__} (only data is allowed)")
        return make(*args)
    return build


def _plain_dtype(*args: Any) -> np.dtype:
    """``numpy.dtype`` without object dtypes (an object array of a huge shape is allocated before its data)."""
    dt = np.dtype(*args)
    if dt.hasobject:
        raise pickle.UnpicklingError("refused an object dtype (a checkpoint holds numbers only)")
    return dt


def _empty_reconstruct(make: Callable[..., Any]) -> Callable[..., Any]:
    """numpy's ``_reconstruct(cls, shape, dtype)`` as numpy pickles call it: with an empty shape. Any other
    shape would allocate the array before its data is read (and checked against the file)."""
    def build(cls: Any, shape: Any, dtype: Any) -> Any:
        if cls is not np.ndarray or not isinstance(shape, tuple) or 0 not in shape:
            raise pickle.UnpicklingError("refused numpy _reconstruct of a non-empty or non-ndarray shape")
        return make(cls, shape, dtype)
    return build


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): _plain_dtype,
        ("collections", "OrderedDict"): OrderedDict,
        ("_codecs", "encode"): _latin1_encode,
    }
    # numpy 1.x pickles name numpy.core.*, numpy 2.x numpy._core.*: both resolve to the same
    # reconstruction functions (array and scalar), which only build data from bytes.
    # Protocol-5 pickles (numpy >= 1.16) use numeric._frombuffer(bytes, dtype, shape, order) instead.
    from numpy._core import multiarray as ma, numeric  # numpy >= 2

    for pkg in ("numpy.core", "numpy._core"):
        allowed[(pkg + ".multiarray", "_reconstruct")] = _empty_reconstruct(ma._reconstruct)
        allowed[(pkg + ".multiarray", "scalar")] = ma.scalar
        allowed[(pkg + ".numeric", "_frombuffer")] = numeric._frombuffer
    # plain-data builtins (containers and numbers); no callables with side effects
    for name in ("dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "bool", "str", "bytes",
                 "bytearray"):
        allowed[("builtins", name)] = getattr(__import__("builtins"), name)
        allowed[("__builtin__", name)] = allowed[("builtins", name)]   # python-2 spelling
    for name in ("bytes", "bytearray"):
        allowed[("builtins", name)] = allowed[("__builtin__", name)] = _no_size(name, allowed[("builtins", name)])
    return allowed


class _BoundedReader:
    """A file for ``pickletools.genops`` that refuses any read past the end of the file *before* reading:
    pickle opcodes declare their data's length (up to 2**64) and ``_pickle`` allocates that much first."""

    def __init__(self, f: Any, size: int):
        self.f, self.left = f, size

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.left
        if n > self.left:
            raise pickle.UnpicklingError(f"an entry declares {n} bytes, more than the {self.left} left in the file")
        data = self.f.read(n)
        self.left -= len(data)
        return data

    def readline(self) -> bytes:
        line = self.f.readline(1 << 16)
        self.left -= len(line)
        return line

    def tell(self) -> int:
        return int(self.f.tell())


def check_sizes(f: Any, size: int) -> None:
    """Walk the pickle's opcodes (nothing is built) and refuse one whose declared data length exceeds what is
    left of the ``size``-byte file. Raises pickle.UnpicklingError / ValueError."""
    for _op, _arg, _pos in pickletools.genops(_BoundedReader(f, size)):
        pass


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only numpy-array / container globals (see module doc)."""

    _ALLOWED = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle API
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise WeightsCorrupt(
                f"The detector weights file refers to '{module}.{name}', which a Detectron2 model-zoo file never "
                f"contains, so it was not loaded (it may be tampered with or not a checkpoint); {VERIFY_HINT}."
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise WeightsCorrupt(f"The detector weights file uses pickle persistent ids (not a Detectron2 "
                             f"model-zoo file); {VERIFY_HINT}.")


def read_d2_pickle(path: Path) -> dict[str, np.ndarray]:
    """Return the ``"model"`` dict of a Detectron2 ``.pkl``: {detectron2 key: numeric numpy array}.

    Raises WeightsMissing (no file) or WeightsCorrupt (unreadable, unexpected globals, wrong layout)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsMissing(f"The detector weights file {path} is missing; run `patchcolor weights fetch` to download it.")
    try:
        with open(path, "rb") as f:
            check_sizes(f, path.stat().st_size)      # declared lengths bounded by the file, before allocating
            f.seek(0)
            data = RestrictedUnpickler(f, encoding="latin1").load()
    except WeightsCorrupt:
        raise
    except Exception as e:  # truncated file, not a pickle, numpy refusing the data, ...
        raise WeightsCorrupt(f"The detector weights file {path.name} cannot be read as a Detectron2 checkpoint "
                             f"({type(e).__name__}: {e}); {VERIFY_HINT}.") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise WeightsCorrupt(f"The detector weights file {path.name} has no 'model' dictionary, so it is not a "
                             f"Detectron2 model-zoo checkpoint; {VERIFY_HINT}.")
    model = data["model"]
    for k, v in model.items():
        if not isinstance(k, str) or not isinstance(v, np.ndarray) or v.dtype.kind not in "fiu":
            raise WeightsCorrupt(f"The detector weights file {path.name} holds a non-numeric entry {k!r}; {VERIFY_HINT}.")
    return model


# ------------------------------------------------------------------------------------------- key mapping
# torchvision key pattern -> detectron2 key template (re.sub replacement); first match wins.
_TV_TO_D2: tuple[tuple[re.Pattern[str], str], ...] = tuple((re.compile(p + r"$"), r) for p, r in (
    (r"backbone\.body\.conv1\.weight", "backbone.bottom_up.stem.conv1.weight"),
    (r"backbone\.body\.bn1\.(\w+)", r"backbone.bottom_up.stem.conv1.norm.\1"),
    (r"backbone\.body\.layer(\d)\.(\d+)\.conv(\d)\.weight", r"backbone.bottom_up.res<\1>.\2.conv\3.weight"),
    (r"backbone\.body\.layer(\d)\.(\d+)\.bn(\d)\.(\w+)", r"backbone.bottom_up.res<\1>.\2.conv\3.norm.\4"),
    (r"backbone\.body\.layer(\d)\.(\d+)\.downsample\.0\.weight", r"backbone.bottom_up.res<\1>.\2.shortcut.weight"),
    (r"backbone\.body\.layer(\d)\.(\d+)\.downsample\.1\.(\w+)", r"backbone.bottom_up.res<\1>.\2.shortcut.norm.\3"),
    (r"backbone\.fpn\.inner_blocks\.(\d)\.0\.(\w+)", r"backbone.fpn_lateral<\1>.\2"),
    (r"backbone\.fpn\.layer_blocks\.(\d)\.0\.(\w+)", r"backbone.fpn_output<\1>.\2"),
    (r"rpn\.head\.conv\.0\.0\.(\w+)", r"proposal_generator.rpn_head.conv.\1"),
    (r"rpn\.head\.cls_logits\.(\w+)", r"proposal_generator.rpn_head.objectness_logits.\1"),
    (r"rpn\.head\.bbox_pred\.(\w+)", r"proposal_generator.rpn_head.anchor_deltas.\1"),
    (r"roi_heads\.box_head\.fc6\.(\w+)", r"roi_heads.box_head.fc1.\1"),
    (r"roi_heads\.box_head\.fc7\.(\w+)", r"roi_heads.box_head.fc2.\1"),
    (r"roi_heads\.box_predictor\.(cls_score|bbox_pred)\.(\w+)", r"roi_heads.box_predictor.\1.\2"),
    (r"roi_heads\.mask_head\.(\d)\.0\.(\w+)", r"roi_heads.mask_head.mask_fcn{\1}.\2"),
    (r"roi_heads\.mask_predictor\.conv5_mask\.(\w+)", r"roi_heads.mask_head.deconv.\1"),
    (r"roi_heads\.mask_predictor\.mask_fcn_logits\.(\w+)", r"roi_heads.mask_head.predictor.\1"),
))


def tv_to_d2_key(tv_key: str) -> str:
    """torchvision Mask R-CNN key -> the Detectron2 checkpoint key it is loaded from.

    ``layer{n}`` <-> ``res{n+1}``; FPN/mask-head indices i <-> Detectron2's 1-based/level names."""
    for pat, rep in _TV_TO_D2:
        m = pat.match(tv_key)
        if m:
            out = m.expand(rep)
            # index shifts the regex replacement cannot do: res<n> = layer n+1, fpn_*<i> = level i+2,
            # mask_fcn{i} = i+1
            out = re.sub(r"res<(\d)>", lambda g: f"res{int(g[1]) + 1}", out)
            out = re.sub(r"(fpn_\w+)<(\d)>", lambda g: f"{g[1]}{int(g[2]) + 2}", out)
            return re.sub(r"mask_fcn\{(\d)\}", lambda g: f"mask_fcn{int(g[1]) + 1}", out)
    raise KeyError(tv_key)


def _cls_rows(a: np.ndarray) -> np.ndarray:
    """Detectron2 cls_score rows [0..79 classes, 80 background] -> torchvision [background, 0..79]."""
    return np.concatenate([a[-1:], a[:-1]], axis=0)


def _prepend_zero_rows(n: int) -> Callable[[np.ndarray], np.ndarray]:
    return lambda a: np.concatenate([np.zeros((n,) + a.shape[1:], a.dtype), a], axis=0)


def _bgr_to_rgb(a: np.ndarray) -> np.ndarray:
    """conv1 weight (64, 3, 7, 7): input channels B,G,R -> R,G,B."""
    return a[:, ::-1]


# tv key -> (transform, number of leading rows the transform adds)
_TRANSFORMS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], int]] = {
    "backbone.body.conv1.weight": (_bgr_to_rgb, 0),
    "roi_heads.box_predictor.cls_score.weight": (_cls_rows, 0),
    "roi_heads.box_predictor.cls_score.bias": (_cls_rows, 0),
    "roi_heads.box_predictor.bbox_pred.weight": (_prepend_zero_rows(4), 4),
    "roi_heads.box_predictor.bbox_pred.bias": (_prepend_zero_rows(4), 4),
    "roi_heads.mask_predictor.mask_fcn_logits.weight": (_prepend_zero_rows(1), 1),
    "roi_heads.mask_predictor.mask_fcn_logits.bias": (_prepend_zero_rows(1), 1),
}


def convert_to_torchvision(d2: Mapping[str, np.ndarray], target: Mapping[str, torch.Size | tuple[int, ...]],
                           source_name: str = "the detector weights file") -> dict[str, torch.Tensor]:
    """Build a torchvision state_dict (float32, contiguous CPU tensors) for the keys/shapes in ``target``.

    d2:     Detectron2 ``"model"`` dict (as read by :func:`read_d2_pickle`).
    target: {torchvision key: shape}, normally ``{k: v.shape for k, v in model.state_dict().items()}``.
    Raises WeightsCorrupt naming the Detectron2 key when one is missing or has the wrong shape."""
    out: dict[str, torch.Tensor] = {}
    for tv_key, shape in target.items():
        shape = tuple(shape)
        d2_key = tv_to_d2_key(tv_key)
        fn, added = _TRANSFORMS.get(tv_key, (None, 0))
        want = (shape[0] - added,) + shape[1:] if shape else shape
        arr = d2.get(d2_key)
        if arr is None and d2_key.endswith((".norm.running_mean", ".norm.running_var")):
            arr = np.full(want, 0.0 if d2_key.endswith("mean") else 1.0, np.float32)   # FrozenBN default stats
        if arr is None:
            raise WeightsCorrupt(f"{source_name} lacks the tensor '{d2_key}', so it is not the Detectron2 "
                                 f"Mask R-CNN R101-FPN checkpoint; {VERIFY_HINT}.")
        if tuple(arr.shape) != want:
            raise WeightsCorrupt(f"{source_name} has '{d2_key}' with shape {list(arr.shape)} where {list(want)} "
                                 f"is expected (a different model?); {VERIFY_HINT}.")
        if fn is not None:
            arr = fn(arr)
        out[tv_key] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    return out
