"""Client of the PatchColor colorize service (standard library + pyzmq only; used by the GIMP plug-in and by
``patchcolor colorize --remote``). The wire protocol is documented in docs/protocol.md."""
from .client import (BackendError, BackendUnavailable, Client, ColorizeResult, Instance, JobCancelled,
                     load_public_key)
from .protocol import DEFAULT_ENDPOINT, PIXEL_FORMATS, PROTOCOL_VERSION, RESULT_FORMATS, STAGES

__all__ = ["Client", "ColorizeResult", "Instance", "BackendError", "BackendUnavailable", "JobCancelled",
           "load_public_key", "DEFAULT_ENDPOINT", "PIXEL_FORMATS", "PROTOCOL_VERSION", "RESULT_FORMATS", "STAGES"]
