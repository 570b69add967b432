"""Client of the PatchColor colorize service, used by the GIMP plug-in and by ``patchcolor colorize --remote``.

Standard library only: pyzmq is used when it imports, else a built-in ZMTP 3.1 transport (transport.py, zmtp.py);
CURVE (remote, encrypted) needs pyzmq. Also here, for the GIMP plug-in: endpoint rules (endpoint.py), config.json
(config.py), the local backend's auto-start and cancel watchdog (launcher.py), running a job with its messages
(jobs.py, messages.py), a result's stored metadata (resultmeta.py), the dialog's choices (dialogspec.py), colour
hints (hintmap.py) and the dialog preview's requests (previewflow.py). The wire protocol is documented in
docs/protocol.md."""
from .client import (BackendError, BackendUnavailable, Client, ColorizeResult, ConnectError, HintMap, WireInstance,
                     JobCancelled, load_public_key)
from .protocol import DEFAULT_ENDPOINT, PIXEL_FORMATS, PROTOCOL_VERSION, RESULT_FORMATS, STAGES

__all__ = ["Client", "ColorizeResult", "HintMap", "WireInstance", "BackendError", "BackendUnavailable", "ConnectError",
           "JobCancelled", "load_public_key", "DEFAULT_ENDPOINT", "PIXEL_FORMATS", "PROTOCOL_VERSION",
           "RESULT_FORMATS", "STAGES"]
