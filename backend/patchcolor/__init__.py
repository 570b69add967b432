__version__ = "0.1.0"

from . import device as _device  # noqa: E402,F401 - on macOS, sets PYTORCH_ENABLE_MPS_FALLBACK before torch loads
