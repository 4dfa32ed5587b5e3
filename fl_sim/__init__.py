"""fl-sim: simulate cloud-device collaborative learning of multimodal LLMs (CD-CCA) on device fleets."""

__version__ = "0.1.0"


class FlSimError(Exception):
    """A user-facing error: the CLI prints its message as one line, without a traceback."""


class PayloadError(FlSimError):
    """A malformed upload or downlink payload: it is rejected (and counted), never applied."""
