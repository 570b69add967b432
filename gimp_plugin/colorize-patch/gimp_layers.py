"""The plug-in's GIMP layer adapter: pixels in and out through babl, parasites, finding a result's group, photo and
masks, and building or updating the result layers. GIMP calls only (main thread); the logic that needs no GIMP is
in ``patchcolor_client`` (resultmeta: the stored metadata and mask arithmetic; messages: every sentence).

Layer layout of a result, directly above the photo layer (see patchcolor_client/resultmeta.py for the parasites):

    Colorize (Patch)            group, visible
      Masks                     group, visible; its mask layers are hidden: turning one's eye on highlights it
        person 97%              white = object, in Screen mode (black leaves the image as it is)
      Colorized                 the result
    <photo layer>

The second result in an image is named "Colorize (Patch), run 2", "Masks, run 2", ... (layer names are unique in
an image; GIMP would otherwise append " #1").
"""
from __future__ import annotations

import array
import json
import sys
from typing import Any, Iterator

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp  # noqa: E402

from patchcolor_client import HintMap, hintmap  # noqa: E402
from patchcolor_client import messages as msg  # noqa: E402
from patchcolor_client import resultmeta as rm  # noqa: E402
from patchcolor_client.jobs import CallingError, PluginError  # noqa: E402

#: a mask layer's mode and opacity: Screen leaves the image unchanged under black and lightens it under white,
#: so turning a mask's eye on highlights just its object; painting white/black still edits it, and Re-fuse Masks reads
#: its gray values whatever the mode
MASK_MODE = Gimp.LayerMode.SCREEN
MASK_OPACITY = 60.0

#: wire pixel format -> babl format (GEGL reads/writes native-endian u16; the wire is little-endian)
BABL = {
    "gray8": "Y' u8", "graya8": "Y'A u8", "rgb8": "R'G'B' u8", "rgba8": "R'G'B'A u8",
    "gray16": "Y' u16", "graya16": "Y'A u16", "rgb16": "R'G'B' u16", "rgba16": "R'G'B'A u16",
}


# ---- pixels --------------------------------------------------------------------------------------------------------

def swap16(data: Any) -> bytes:
    """Native-endian u16 (what GEGL gives) <-> little-endian (the wire)."""
    if sys.byteorder == "little":
        return bytes(data)
    a = array.array("H")
    a.frombytes(bytes(data))
    a.byteswap()
    return a.tobytes()


def bits(image: Any) -> int:
    """8 for 8-bit images, else 16 (higher precisions are sent as 16 bit)."""
    p = image.get_precision()
    return 8 if p in (Gimp.Precision.U8_LINEAR, Gimp.Precision.U8_NON_LINEAR, Gimp.Precision.U8_PERCEPTUAL) else 16


def wire_format(image: Any, layer: Any) -> str:
    """The wire format a layer is sent in, e.g. "gray8", "rgba16"."""
    gray = image.get_base_type() == Gimp.ImageBaseType.GRAY
    return ("gray" if gray else "rgb") + ("a" if layer.has_alpha() else "") + str(bits(image))


def read(drawable: Any, fmt: str, rect: tuple[int, int, int, int] | None = None) -> bytes:
    """A drawable's pixels (layer-local ``rect``: x, y, w, h; default all) in wire format ``fmt``."""
    r = rect or (0, 0, drawable.get_width(), drawable.get_height())
    data = drawable.get_buffer().get(Gegl.Rectangle.new(*r), 1.0, BABL[fmt], Gegl.AbyssPolicy.NONE)
    return swap16(data) if fmt.endswith("16") else bytes(data)


def write(buffer: Any, w: int, h: int, fmt: str, data: Any) -> None:
    """Fill a w x h GEGL buffer from wire-format ``data``."""
    buffer.set(Gegl.Rectangle.new(0, 0, w, h), BABL[fmt], swap16(data) if fmt.endswith("16") else bytes(data))
    buffer.flush()


# ---- parasites and the layer tree ----------------------------------------------------------------------------------

def attach_json(item: Any, name: str, obj: dict) -> None:
    data = json.dumps(obj, separators=(",", ":")).encode()
    item.attach_parasite(Gimp.Parasite.new(name, Gimp.PARASITE_PERSISTENT | Gimp.PARASITE_UNDOABLE, list(data)))


def read_json(item: Any, name: str) -> dict | None:
    p = item.get_parasite(name)
    if p is None:
        return None
    try:
        obj = json.loads(bytes(p.get_data()).decode())
    except (ValueError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def descendants(group: Any) -> Iterator[Any]:
    for child in group.get_children():
        yield child
        if child.is_group_layer():
            yield from descendants(child)


def all_layers(image: Any) -> Iterator[Any]:
    for layer in image.get_layers():
        yield layer
        if layer.is_group_layer():
            yield from descendants(layer)


def shown(item: Any) -> bool:
    """True when the item and every group above it are visible (it contributes to the image)."""
    while item is not None:
        if not item.get_visible():
            return False
        item = item.get_parent()
    return True


def result_of(item: Any) -> Any | None:
    """The result group ``item`` is or belongs to, or None."""
    while item is not None:
        if item.is_group_layer() and item.get_parasite(rm.PARASITE_GROUP) is not None:
            return item
        item = item.get_parent()
    return None


# ---- what the procedures were given --------------------------------------------------------------------------------

def the_photo(image: Any, drawables: list) -> Any:
    """The one pixel layer to colorize; CallingError (one sentence) for anything else."""
    if image.get_base_type() == Gimp.ImageBaseType.INDEXED:
        raise CallingError(msg.INDEXED_IMAGE)
    if len(drawables) != 1:
        raise CallingError(msg.NOT_ONE_LAYER.format(n=len(drawables)))
    d = drawables[0]
    if not d.is_layer():
        raise CallingError(msg.NOT_A_LAYER)
    name = d.get_name()
    group = result_of(d)
    if group is not None:
        if d.is_group_layer() and d == group:
            raise CallingError(msg.RESULT_GROUP.format(name=name))
        if d.get_parasite(rm.PARASITE_MASK) is not None or d.get_parasite(rm.PARASITE_MASKS) is not None:
            raise CallingError(msg.A_MASK.format(name=name))
        raise CallingError(msg.INSIDE_RESULT.format(name=name))
    if d.is_group_layer():
        raise CallingError(msg.GROUP_LAYER.format(name=name))
    return d


def the_result(drawables: list) -> Any:
    """The result group a selected layer (or layer mask) belongs to; CallingError otherwise."""
    if len(drawables) != 1:
        raise CallingError(msg.RECOMPOSE_SELECT_ONE)
    item = drawables[0]
    if item.is_layer_mask():                    # a layer's mask is selected: start from its layer
        item = Gimp.Layer.from_mask(Gimp.LayerMask.get_by_id(item.get_id()))
    group = result_of(item)
    if group is None:
        raise CallingError(msg.RECOMPOSE_NOT_RESULT.format(name=item.get_name()))
    return group


def stored_meta(group: Any) -> rm.GroupMeta:
    meta = rm.GroupMeta.from_json(read_json(group, rm.PARASITE_GROUP))
    if meta is None:
        raise PluginError(msg.META_DAMAGED)
    return meta


def next_run(image: Any) -> int:
    """The number of the image's next result: 1 + the highest run of the results it holds (1 when none)."""
    runs = [m.run for m in (rm.GroupMeta.from_json(read_json(l, rm.PARASITE_GROUP)) for l in all_layers(image)
                            if l.is_group_layer()) if m is not None]
    return max(runs, default=0) + 1


def find_source(image: Any, group: Any, meta: rm.GroupMeta) -> Any | None:
    """The photo layer a result was made from: by its parasite, else the pixel layer just below the group."""
    for layer in all_layers(image):
        if not layer.is_group_layer() and rm.is_source_of(read_json(layer, rm.PARASITE_SOURCE), meta.uid):
            return layer
    parent = group.get_parent()
    siblings = parent.get_children() if parent is not None else image.get_layers()
    pos = image.get_item_position(group)
    if pos + 1 < len(siblings) and not siblings[pos + 1].is_group_layer():
        return siblings[pos + 1]
    return None


def _mask_frame(layer: Any, origin: tuple[int, int], w: int, h: int) -> bytes:
    """A mask layer as a w x h gray8 frame in the job's coordinates (the photo layer's extent at colorize time):
    moved or resized mask layers are handled, transparent pixels count as black."""
    _, mx, my = layer.get_offsets()
    rect = (origin[0] - mx, origin[1] - my, w, h)
    if layer.has_alpha():        # premultiplied gray: transparent counts as black
        return bytes(layer.get_buffer().get(Gegl.Rectangle.new(*rect), 1.0, "Y'aA u8", Gegl.AbyssPolicy.NONE))[0::2]
    return read(layer, "gray8", rect)


def edited_masks(group: Any, meta: rm.GroupMeta) -> tuple[Any, list[bytes]]:
    """(Colorized layer, one w x h 0/255 mask per stored instance; all zero for a deleted mask layer)."""
    w, h, n = meta.width, meta.height, len(meta.instances)
    colorized, masks = None, [None] * n
    for child in descendants(group):
        if child.is_group_layer():
            continue
        if colorized is None and child.get_parasite(rm.PARASITE_COLORIZED) is not None:
            colorized = child
        m = read_json(child, rm.PARASITE_MASK)
        if m is not None and isinstance(m.get("index"), int) and 0 <= m["index"] < n:
            masks[m["index"]] = rm.merge_masks(masks[m["index"]], _mask_frame(child, meta.origin, w, h))
    if colorized is None:
        raise PluginError(msg.COLORIZED_DELETED)
    if colorized.get_width() != w or colorized.get_height() != h:
        raise PluginError(msg.COLORIZED_RESIZED.format(now=f"{colorized.get_width()}x{colorized.get_height()}",
                                                       was=f"{w}x{h}"))
    return colorized, [rm.binarize(m) if m is not None else bytes(w * h) for m in masks]


# ---- writing results -----------------------------------------------------------------------------------------------

def add_result(image: Any, src: Any, res: Any, meta: rm.GroupMeta) -> Any:
    """Every change of a Colorize run, in one undo group: the result group directly above ``src`` (see the
    module docstring). ``res``: the client's ColorizeResult, already checked against the layer."""
    w, h = src.get_width(), src.get_height()
    _, offx, offy = src.get_offsets()
    suffix = rm.run_suffix(meta.run)
    image.undo_group_start()
    group = None
    converted = False
    try:
        if image.get_base_type() == Gimp.ImageBaseType.GRAY:
            image.convert_rgb()
            converted = True
        group = Gimp.GroupLayer.new(image, rm.GROUP_NAME + suffix)
        if not image.insert_layer(group, src.get_parent(), image.get_item_position(src)):
            raise PluginError(msg.GIMP_REFUSED_GROUP)
        attach_json(group, rm.PARASITE_GROUP, meta.to_json())
        attach_json(src, rm.PARASITE_SOURCE, rm.source_record(read_json(src, rm.PARASITE_SOURCE), meta.uid))

        ltype = Gimp.ImageType.RGBA_IMAGE if res.fmt.startswith("rgba") else Gimp.ImageType.RGB_IMAGE
        col = Gimp.Layer.new(image, rm.COLORIZED_NAME + suffix, w, h, ltype, 100.0, Gimp.LayerMode.NORMAL)
        image.insert_layer(col, group, 0)
        col.set_offsets(offx, offy)
        write(col.get_buffer(), w, h, res.fmt, res.pixels)
        attach_json(col, rm.PARASITE_COLORIZED, {"uid": meta.uid})
        if not Gimp.Selection.is_empty(image):
            # outside the selection the Colorized layer is transparent, so the photo shows unchanged
            col.add_mask(col.create_mask(Gimp.AddMaskType.SELECTION))
        col.update(0, 0, w, h)

        if res.instances:
            # above Colorized, so that turning a mask layer's eye on shows it; the group itself stays visible
            masks = Gimp.GroupLayer.new(image, rm.MASKS_NAME + suffix)
            image.insert_layer(masks, group, 0)
            masks.set_mode(Gimp.LayerMode.PASS_THROUGH)     # each mask blends with the Colorized layer itself
            attach_json(masks, rm.PARASITE_MASKS, {"uid": meta.uid})
            for i, inst in enumerate(res.instances):
                ml = Gimp.Layer.new(image, rm.instance_layer_name(inst.class_name, inst.score, meta.run), w, h,
                                    Gimp.ImageType.RGB_IMAGE, MASK_OPACITY, MASK_MODE)
                image.insert_layer(ml, masks, i)
                ml.set_offsets(offx, offy)
                write(ml.get_buffer(), w, h, "gray8", inst.full_mask(w, h))
                ml.set_visible(False)
                attach_json(ml, rm.PARASITE_MASK, {"index": i, "uid": meta.uid})
                ml.update(0, 0, w, h)
        image.set_selected_layers([group])
    except Exception:
        # best effort to leave the image as it was (the undo group also holds every step)
        try:
            if group is not None and group.is_valid():
                image.remove_layer(group)
            if converted:
                image.convert_grayscale()
        except Exception:       # noqa: BLE001 - the original error is the one to report
            pass
        raise
    finally:
        image.undo_group_end()
    return group


def update_result(image: Any, group: Any, colorized: Any, res: Any, meta: rm.GroupMeta | None) -> None:
    """A recompose's new pixels into the Colorized layer, undoably and in one undo group; ``meta``: the group's
    new metadata (after a re-colorize), or None to keep it."""
    w, h = colorized.get_width(), colorized.get_height()
    image.undo_group_start()
    try:
        # The shadow buffer + merge_shadow(undo=True) is GIMP's undoable in-place update; merging is clipped to
        # the selection, so the selection is cleared for the merge and restored afterwards (both undoable).
        saved = None
        if not Gimp.Selection.is_empty(image):
            saved = Gimp.Selection.save(image)
            Gimp.Selection.none(image)
        write(colorized.get_shadow_buffer(), w, h, res.fmt, res.pixels)
        colorized.merge_shadow(True)
        colorized.update(0, 0, w, h)
        if saved is not None:
            image.select_item(Gimp.ChannelOps.REPLACE, saved)
            image.remove_channel(saved)
        if meta is not None:
            attach_json(group, rm.PARASITE_GROUP, meta.to_json())
    finally:
        image.undo_group_end()


# ---- colour hints --------------------------------------------------------------------------------------------------

def find_hint_layer(image: Any, layer: Any, hidden: bool = False) -> Any | None:
    """The visible colour-hint layer for the photo ``layer``: a pixel layer tagged with the hints parasite or named
    "Colour hints" / "Color hints", one in the photo's own layer stack first. Hidden hint layers count only with
    ``hidden``."""
    found = [h for h in all_layers(image) if not h.is_group_layer() and h != layer and (hidden or shown(h))
             and (h.get_parasite(hintmap.PARASITE_HINTS) is not None or hintmap.is_hint_layer_name(h.get_name()))]
    if not found:
        return None
    same = [h for h in found if h.get_parent() == layer.get_parent()]
    return (same or found)[0]


def hint_map(image: Any, layer: Any, use_hints: bool) -> tuple[HintMap | None, int]:
    """(HintMap, number of hints) for the photo ``layer`` from the image's visible hint layer, or (None, 0) when
    there is none, it is empty, or hints are switched off. The hint layer is read over the photo layer's extent
    (moved or smaller hint layers work: outside it there is no hint)."""
    if not use_hints:
        return None, 0
    hl = find_hint_layer(image, layer)
    if hl is None:
        return None, 0
    if not hl.has_alpha():
        raise PluginError(msg.HINTS_NO_ALPHA.format(name=hl.get_name()))
    w, h = layer.get_width(), layer.get_height()
    _, hx, hy = hl.get_offsets()
    _, lx, ly = layer.get_offsets()
    data = bytes(hl.get_buffer().get(Gegl.Rectangle.new(lx - hx, ly - hy, w, h), 1.0, BABL["rgba8"],
                                     Gegl.AbyssPolicy.NONE))
    n = hintmap.count_blobs(data[3::4], w, h)
    return (HintMap(w, h, "rgba8", data), n) if n else (None, 0)


def add_hint_layer(image: Any, layer: Any) -> Any:
    """The photo's hint layer, made (empty, transparent, above the photo, one undo step) when there is none;
    shown and selected, with a paintbrush of a few pixels at full opacity (one dab = one hint)."""
    hl = find_hint_layer(image, layer, hidden=True)
    if hl is not None and not shown(hl):
        item = hl
        while item is not None:
            item.set_visible(True)
            item = item.get_parent()
    if hl is None:
        image.undo_group_start()
        try:
            if image.get_base_type() == Gimp.ImageBaseType.GRAY:
                image.convert_rgb()          # colours cannot be painted in a grayscale image
            hl = Gimp.Layer.new(image, hintmap.HINT_LAYER_NAME, image.get_width(), image.get_height(),
                                Gimp.ImageType.RGBA_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
            image.insert_layer(hl, layer.get_parent(), image.get_item_position(layer))
            hl.fill(Gimp.FillType.TRANSPARENT)
            attach_json(hl, hintmap.PARASITE_HINTS, {"version": 1})
        finally:
            image.undo_group_end()
    image.set_selected_layers([hl])
    try:
        Gimp.context_set_paint_method("gimp-paintbrush")
        Gimp.context_set_paint_mode(Gimp.LayerMode.NORMAL)
        Gimp.context_set_opacity(100.0)
        Gimp.context_set_brush_size(float(max(3, min(image.get_width(), image.get_height()) // 80)))
    except Exception:           # noqa: BLE001 - the layer is what matters
        pass
    return hl


# ---- the Preview procedure's image ---------------------------------------------------------------------------------

PREVIEW_LAYER = "Preview"                   # the exact preview
PREVIEW_DRAFT_LAYER = "Preview (draft)"     # a draft (approximate: the backend had no exact analysis yet)


def preview_image(res: Any) -> Any:
    """A new (undisplayed) image holding a preview result's 8-bit pixels in one layer named for what it is."""
    out = Gimp.Image.new(res.width, res.height, Gimp.ImageBaseType.RGB)
    ltype = Gimp.ImageType.RGBA_IMAGE if res.fmt == "rgba8" else Gimp.ImageType.RGB_IMAGE
    name = PREVIEW_DRAFT_LAYER if res.extra.get("draft") else PREVIEW_LAYER
    pl = Gimp.Layer.new(out, name, res.width, res.height, ltype, 100.0, Gimp.LayerMode.NORMAL)
    out.insert_layer(pl, None, 0)
    write(pl.get_buffer(), res.width, res.height, res.fmt, res.pixels)
    return out
