"""Names that moved: the hint/preview wire parsing is in protocol.py, the preview session cache in
preview_cache.py. Re-exported here for the modules that still import them from this name."""
from __future__ import annotations

from .preview_cache import PREVIEW_CACHE_BYTES, PreviewSessions, image_digest, run_preview  # noqa: F401
from .protocol import (  # noqa: F401
    HINT_FORMATS, MAX_PREVIEW_SIDE, MIN_PREVIEW_SIDE, PREVIEW_SIDE, HintsMeta, parse_draft, parse_hints,
    parse_long_side, preview_message,
)
