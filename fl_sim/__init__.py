"""fl-sim: simulate cloud-device collaborative learning of multimodal LLMs (CD-CCA) on device fleets."""

__version__ = "0.1.0"


class FlSimError(Exception):
    """A user-facing error: the CLI prints its message as one line, without a traceback."""


class Stopped(FlSimError):
    """A run stopped by Ctrl-C or SIGTERM: its last checkpoint is kept; ``exit_code`` is 130 or 143."""

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code


class PayloadError(FlSimError):
    """A malformed upload or downlink payload: it is rejected (and counted), never applied."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``exc`` as ``Type: first line of its message`` (at most ``limit`` characters of it), for one-line errors."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:limit] if text else ''}"


def ceil_share(share: float, n: float) -> int:
    """``ceil(share * n)`` of the exact product (budgets, kept tokens, DWC density caps): ``0.07 * 100`` is
    7, not the 8 that float rounding gives."""
    import math

    return math.ceil(round(share * n, 9))
