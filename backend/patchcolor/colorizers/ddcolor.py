"""DDColor (Kang et al., ICCV 2023) as a colorizer of the pipeline, on the spandrel-extra-arches network.

The network is spandrel-extra-arches' ``DDColor`` (the authors' architecture; MIT, the chaiNNer/ComfyUI loader),
built from the weight file's keys (ConvNeXt-T or -L encoder, the multi-scale colour decoder). Input (N, 3, n, n)
gray RGB in [0, 1] (see :data:`~patchcolor.colorizers.inputs.GRAY_RGB`), n a multiple of 32; output (N, 2, n, n)
Lab a/b in raw units.

Weight files read (:func:`read_state_dict`), always strictly (every key, every shape) and safely (safetensors or
``torch.load(weights_only=True)``):

* the authors' model-zoo ``.pth`` files (``ddcolor_modelscope.pth`` …), a state dict possibly wrapped as
  ``{"params": …}`` (``params_ema`` / ``state_dict`` / a ``module.`` prefix are unwrapped too);
* a Hugging Face model folder (``piddnad/ddcolor_*``: ``model.safetensors`` or ``pytorch_model.bin`` with its
  ``config.json``, which must agree with the weights);
* ModelScope's ``pytorch_model.pt`` (the file, or its folder).

The one tolerated extra is the ConvNeXt classification head ``encoder.arch.head_cls.*`` that the authors'
network does not have (their loader ignores it; so does spandrel's).

At load, without changing the output beyond float rounding (``bench/bench_ddcolor.py`` measures each change):
the spectral norms are folded into plain weights; and :meth:`DDColorColorizer.forward` runs the network step by
step with the decoder's tail reformulated — the last ×4 pixel-shuffle upsampling, its 2×2 blur, the
query-by-feature einsum and the 1×1 refinement are all linear after the ReLU, so the (queries → a/b) projection
is applied first, per sub-pixel, and only 2 channels are shuffled and blurred at full size instead of 256
(plus 100 query maps); the position embeddings are cached per feature-map size.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PatchColorError, WeightsCorrupt
from .inputs import GRAY_RGB

PACKAGE = "spandrel_extra_arches"
#: keys the authors' files may carry that the network does not have (ConvNeXt's classification head)
IGNORED_KEYS = ("encoder.arch.head_cls.weight", "encoder.arch.head_cls.bias")
#: wrappers of the state dict in BasicSR-style checkpoints (the authors' training code)
WRAPPERS = ("params", "params_ema", "state_dict")
#: weight files looked for in a model folder, in this order (Hugging Face, then ModelScope)
FOLDER_FILES = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pt")
#: config.json fields (PyTorchModelHubMixin: the authors' DDColor(...) arguments) checked against the weights
#: keys that make a DDColor file the published configuration (the multi-scale colour decoder, spectral norm)
OFFICIAL_KEYS = ("decoder.color_decoder.query_feat.weight", "decoder.last_shuf.conv.0.weight_orig",
                 "refine_net.0.0.weight_orig")
CONFIG_FIELDS = ("encoder_name", "decoder_name", "num_output_channels", "last_norm", "num_queries", "num_scales",
                 "dec_layers", "nf")
TAIL_CHUNK = 512    # pixels of the last feature map per step of the folded tail: 8 MB of its ×16 channels


def need_package() -> None:
    """Raise one sentence when spandrel-extra-arches (the optional extra ``patchcolor[ddcolor]``) is absent."""
    import importlib.util

    if importlib.util.find_spec(PACKAGE) is None:
        raise PatchColorError("DDColor needs the optional packages spandrel and spandrel-extra-arches, which are not "
                              "installed: run `pip install 'patchcolor[ddcolor]'` (or `python3 install.py --ddcolor`)"
                              " in this environment, or choose --colorizer eccv16.")


# --------------------------------------------------------------------------------------------------- files
def _load_tensors(path: Path) -> Any:
    """The object stored in ``path``: safetensors by its header, else torch.load with weights_only=True."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (100 << 20):
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    return torch.load(path, map_location="cpu", weights_only=True)


def weights_in(path: Path) -> tuple[Path, Path | None]:
    """(weight file, config.json or None) for a weight file or a model folder. WeightsCorrupt if none is there."""
    path = Path(path)
    if not path.is_dir():
        return path, None
    config = path / "config.json"
    for name in FOLDER_FILES:
        if (path / name).is_file():
            return path / name, config if config.is_file() else None
    raise WeightsCorrupt(f"the folder has none of {', '.join(FOLDER_FILES)}")


def unwrap(obj: Any) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint object: ``{"params": sd}``-style wrappers and a common ``module.``
    prefix removed, the ignored keys dropped. WeightsCorrupt when it is not a dict of tensors."""
    if isinstance(obj, dict):
        for key in WRAPPERS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                       for k, v in obj.items()):
        raise WeightsCorrupt("it is not a state dict of tensors")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return {k: v for k, v in obj.items() if k not in IGNORED_KEYS}


def read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(state dict, config.json contents or None) from a weight file or model folder (see the module docstring).
    Raises WeightsCorrupt with the reason (unreadable, not tensors, bad config.json)."""
    file, config_path = weights_in(path)
    try:
        obj = _load_tensors(file)
    except Exception as e:   # truncated zip, pickle errors, objects refused by weights_only, bad safetensors
        raise WeightsCorrupt(f"{file.name} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
                             if str(e) else f"{file.name} cannot be read ({type(e).__name__})") from None
    config = None
    if config_path is not None:
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise WeightsCorrupt(f"its config.json is not readable JSON ({e})") from None
        if not isinstance(config, dict):
            raise WeightsCorrupt("its config.json is not a JSON object")
    return unwrap(obj), config


def _load_error(e: Exception) -> str:
    """One sentence from torch's load_state_dict error (missing / unexpected keys, wrong shapes)."""
    import re

    text = str(e)
    parts = []
    for label, pattern in (("missing", r"Missing key\(s\) in state_dict: (.*?)\.\s*$"),
                           ("unexpected", r"Unexpected key\(s\) in state_dict: (.*?)\.\s*$")):
        m = re.search(pattern, text, re.M)
        if m:
            keys = [k.strip().strip('"') for k in m.group(1).split(",")]
            parts.append(f"{label}: {', '.join(keys[:4])}{' …' if len(keys) > 4 else ''}")
    shapes = re.findall(r"size mismatch for ([^:]+):", text)
    if shapes:
        parts.append(f"wrong shape: {', '.join(shapes[:4])}{' …' if len(shapes) > 4 else ''}")
    return "; ".join(parts) if parts else text.splitlines()[0][:200]


def build_network(state: dict[str, torch.Tensor], config: dict[str, Any] | None = None) -> nn.Module:
    """spandrel-extra-arches' DDColor with ``state`` loaded strictly (hyperparameters detected from the keys and,
    when given, checked against ``config``). Raises WeightsCorrupt with the reason."""
    need_package()
    from spandrel_extra_arches.architectures.DDColor import DDColorArch

    arch = DDColorArch()
    if not arch.detect(state):
        some = ", ".join(sorted(state)[:3])
        raise WeightsCorrupt(f"it is not a DDColor state dict (keys {some} …)")
    lacking = [k for k in OFFICIAL_KEYS if k not in state]
    if lacking:
        raise WeightsCorrupt(f"it does not match the DDColor network: missing: {', '.join(lacking)}")
    try:
        desc = arch.load(dict(state))
    except RuntimeError as e:
        raise WeightsCorrupt(f"it does not match the DDColor network: {_load_error(e)}") from None
    except (KeyError, ValueError, IndexError) as e:
        raise WeightsCorrupt(f"it does not match any DDColor variant ({type(e).__name__}: {e})") from None
    net = desc.model
    if config is not None:
        found = dict(net.hyperparameters)
        for key in CONFIG_FIELDS:
            if key in config and key in found and config[key] != found[key]:
                raise WeightsCorrupt(f"its config.json says {key}={config[key]!r} but the weights are "
                                     f"{key}={found[key]!r}")
    return net


def fold_spectral_norm(net: nn.Module) -> int:
    """Replace every spectral-normalised weight by the plain weight it computes in eval mode (W / uᵀWv, the stored
    u and v, no power iteration): the same tensor, computed once. Returns how many were folded."""
    folded = 0
    for module in net.modules():
        if hasattr(module, "weight_orig") and hasattr(module, "weight_u"):
            torch.nn.utils.remove_spectral_norm(module)
            folded += 1
    return folded


# --------------------------------------------------------------------------------------------------- network
class DDColorColorizer(nn.Module):
    """A loaded DDColor network for the pipeline: input (N, 3, n, n) gray RGB in [0, 1] (n a multiple of 32),
    output (N, 2, n, n) a/b. ``net`` is spandrel's DDColor (spectral norms folded, its feature hooks removed:
    :meth:`forward` passes the encoder's features explicitly, so concurrent calls do not share state).

    ``fold_tail`` / ``cache_positions``: the equivalent formulations of the module docstring (True by default;
    the benchmark turns them off to measure what each buys).
    """

    input_spec = GRAY_RGB

    def __init__(self, net: nn.Module, fold_tail: bool = True, cache_positions: bool = True,
                 fast_attention: bool = True, channels_last: bool = True):
        super().__init__()
        self.net = net
        for hook in net.encoder.hooks:
            hook.remove()
        net.encoder.hooks = []
        net.decoder.hooks = []
        self.fold_tail = fold_tail
        self.cache_positions = cache_positions
        self.fast_attention = fast_attention
        self.channels_last = channels_last
        if channels_last:
            net.to(memory_format=torch.channels_last)
        self._positions: dict[tuple, torch.Tensor] = {}

    @property
    def encoder_name(self) -> str:
        """``convnext-t`` (DDColor-T) or ``convnext-l`` (DDColor-L)."""
        return str(self.net.hyperparameters.get("encoder_name"))

    @classmethod
    def from_file(cls, path: Path) -> "DDColorColorizer":
        """Read, check and build (see the module docstring); eval mode, no grad, on the CPU.
        Raises WeightsCorrupt (the reason) or PatchColorError (spandrel-extra-arches not installed)."""
        need_package()
        state, config = read_state_dict(Path(path))
        net = build_network(state, config)
        del state
        net.eval().requires_grad_(False)
        fold_spectral_norm(net)
        return cls(net).eval()

    # -- the network, step by step ------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """ConvNeXt stages on the normalised input; the four normalised stage outputs (strides 4, 8, 16, 32)."""
        arch = self.net.encoder.arch
        feats = []
        for i in range(4):
            x = arch.stages[i](arch.downsample_layers[i](x))
            feats.append(getattr(arch, f"norm{i}")(x))
        return feats

    def decode(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """The pixel decoder's U-Net blocks: features at strides 16, 8, 4 (the colour decoder's three scales)."""
        out, outs = feats[3], []
        for block, skip in zip(self.net.decoder.layers, (feats[2], feats[1], feats[0])):
            up = block.shuf(out)
            out = block.conv(block.relu(torch.cat([up, block.bn(skip)], dim=1)))
            outs.append(out)
        return outs

    def _position(self, pe: nn.Module, feat: torch.Tensor) -> torch.Tensor:
        """The sine position embedding of a (N, C, h, w) map as (h·w, N, C); depends on h, w only (cached)."""
        n, _, h, w = feat.shape
        key = (h, w, feat.device, feat.dtype)
        pos = self._positions.get(key) if self.cache_positions else None
        if pos is None:
            pos = pe(feat[:1], None).flatten(2).permute(2, 0, 1)
            if self.cache_positions:
                self._positions[key] = pos
        return pos.expand(-1, n, -1)

    def color_queries(self, scales: list[torch.Tensor]) -> torch.Tensor:
        """The colour decoder's transformer on the three scales: (N, queries, C) colour embeddings (as
        spandrel's ``MultiScaleColorDecoder.forward`` up to its final einsum). With ``fast_attention``, each
        scale's attention keys (features + positions) and values are made contiguous once, not once per layer,
        and attention runs without returning its weights (torch's fused kernel; the layers never use them)."""
        cd = self.net.decoder.color_decoder
        src, pos = [], []
        for i in range(cd.num_feature_levels):
            pos.append(self._position(cd.pe_layer, scales[i]))
            src.append((cd.input_proj[i](scales[i]).flatten(2)
                        + cd.level_embed.weight[i][None, :, None]).permute(2, 0, 1))
        bs = src[0].shape[1]
        query_embed = cd.query_embed.weight.unsqueeze(1).repeat(1, bs, 1)
        output = cd.query_feat.weight.unsqueeze(1).repeat(1, bs, 1)
        fast = self.fast_attention and not any(
            layer.normalize_before for layer in (*cd.transformer_cross_attention_layers,
                                                 *cd.transformer_self_attention_layers))
        if fast:
            keys = [(s + p).contiguous() for s, p in zip(src, pos)]
            values = [s.contiguous() for s in src]
        for i in range(cd.num_layers):
            level = i % cd.num_feature_levels
            cross, self_attn = cd.transformer_cross_attention_layers[i], cd.transformer_self_attention_layers[i]
            if fast:
                found = cross.multihead_attn(output + query_embed, keys[level], values[level], need_weights=False)[0]
                output = cross.norm(output + found)
                q = output + query_embed
                output = self_attn.norm(output + self_attn.self_attn(q, q, output, need_weights=False)[0])
            else:
                output = cross(output, src[level], memory_mask=None, memory_key_padding_mask=None, pos=pos[level],
                               query_pos=query_embed)
                output = self_attn(output, tgt_mask=None, tgt_key_padding_mask=None, query_pos=query_embed)
            output = cd.transformer_ffn_layers[i](output)
        return cd.color_embed(cd.decoder_norm(output).transpose(0, 1))

    def tail(self, last: torch.Tensor, embed: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """a/b from the stride-4 features ``last`` (N, C, h, w), the colour embeddings (N, Q, C) and the normalised
        input ``x`` (N, 3, 4h, 4w): ``refine(cat(einsum(embed, blur(shuffle(relu(conv(last))))), x))``."""
        shuf, refine = self.net.decoder.last_shuf, self.net.refine_net[0][0]
        q = embed.shape[1]
        if not self.fold_tail:
            feat = torch.einsum("bqc,bchw->bqhw", embed, shuf(last))
            return refine(torch.cat([feat, x], dim=1))
        conv, r = shuf.conv[0], shuf.shuf.upscale_factor
        n, c, h, w = last.shape
        m = torch.einsum("kq,bqc->bkc", refine.weight[:, :q, 0, 0], embed)       # (N, k=2, C): queries -> a/b
        k, cout = m.shape[1], conv.weight.shape[0] // (r * r)
        # the 1×1 convolution's outputs reordered from (channel, sub-pixel) to (sub-pixel, channel), so that one
        # pixel's r² sub-pixels are r² consecutive rows of `cout` channels: one GEMM with m per chunk
        weight = conv.weight.reshape(cout, r * r, c).transpose(0, 1).reshape(r * r * cout, c).t()
        bias = conv.bias.reshape(cout, r * r).t().reshape(-1)
        pixels = last.permute(0, 2, 3, 1).reshape(n, h * w, c)                  # a view when channels-last
        sub = last.new_empty(n, h * w, r * r, k)                                  # a/b per pixel and sub-pixel
        for b in range(n):
            mt = m[b].t()
            for s in range(0, h * w, TAIL_CHUNK):
                e = min(h * w, s + TAIL_CHUNK)
                g = torch.addmm(bias, pixels[b, s:e], weight).relu_()             # (px, r²·cout), cache-sized
                sub[b, s:e] = (g.view(-1, cout) @ mt).view(e - s, r * r, k)
        ab = sub.view(n, h, w, r, r, k).permute(0, 5, 1, 3, 2, 4).reshape(n, k, h * r, w * r)   # pixel shuffle
        if shuf.do_blur:
            ab = shuf.blur(shuf.pad(ab))
        return ab + F.conv2d(x, refine.weight[:, q:], refine.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net
        if x.shape[1] == 3:
            x = net.normalize(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        feats = self.encode(x)
        scales = self.decode(feats)
        out = self.tail(scales[2], self.color_queries(scales), x)
        return (net.denormalize(out) if net.do_normalize else out).contiguous()


def random_gray_batch(n: int, side: int, seed: int = 0) -> torch.Tensor:
    """(n, 3, side, side) gray RGB inputs in [0, 1] with image-like structure (smooth blobs), for benchmarks."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 1, max(2, side // 32), max(2, side // 32), generator=g)
    img = F.interpolate(low, size=(side, side), mode="bicubic", align_corners=False).clamp(0, 1)
    return img.expand(-1, 3, -1, -1).contiguous()


__all__ = ["DDColorColorizer", "build_network", "fold_spectral_norm", "need_package", "random_gray_batch",
           "read_state_dict"]
