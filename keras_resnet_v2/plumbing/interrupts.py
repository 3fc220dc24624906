"""Ctrl-C and SIGTERM stop a command for sure, without a traceback: at once, or at the next training step.

Python turns SIGINT into a `KeyboardInterrupt` wherever the main thread is running. Where no caller
can receive an exception (a garbage-collector callback, which JAX registers and Keras imports JAX
whenever it is installed; a weakref callback; a `__del__` method; ...) Python hands it to
`sys.unraisablehook`, whose default prints "Exception ignored in ... Traceback" and goes on as if
nothing had happened: a user reads a crash, and the run does not stop. `stop_on_signals()` installs
a handler for SIGINT and SIGTERM (what containers and preemptible machines send) that records the
signal and raises `KeyboardInterrupt`, and an unraisable hook that keeps quiet about a
`KeyboardInterrupt` while a recorded signal is pending, wherever Python reports one that way;
`raise_if_stopped()`, which the training loop calls between steps and the command line when its
job returns, raises it again where it can stop the run. Other unraisable exceptions are reported as
before. Outside `stop_on_signals()` (a notebook, a library caller) nothing is recorded and nothing
changes.

Example:
    >>> with stop_on_signals():  # doctest: +SKIP
    ...     try:
    ...         train()               # calls raise_if_stopped() between steps
    ...     except KeyboardInterrupt:
    ...         code = exit_code()    # 130 for Ctrl-C, 143 for SIGTERM
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []


def _handler(signum: int, frame) -> None:
    _received.append(signum)
    raise KeyboardInterrupt  # where Python cannot raise it, `_quiet_about_signals` keeps it quiet


def _quiet_about_signals(report):
    """`sys.unraisablehook` that drops the `KeyboardInterrupt` of a recorded signal (`raise_if_stopped`
    raises it later) and hands anything else to `report`."""

    def hook(unraisable) -> None:
        if _received and isinstance(unraisable.exc_value, KeyboardInterrupt):
            return
        report(unraisable)

    return hook


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise `KeyboardInterrupt` here and are remembered until the block ends."""
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return
    previous = {signum: signal.signal(signum, _handler) for signum in SIGNALS}
    report = sys.unraisablehook
    sys.unraisablehook = _quiet_about_signals(report)
    _received.clear()
    try:
        yield
    finally:  # read `exit_code()` inside the block: after it, nothing is remembered
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sys.unraisablehook = report
        _received.clear()


def received() -> int | None:
    """The first signal that arrived inside `stop_on_signals()` (None: none did)."""
    return _received[0] if _received else None


def raise_if_stopped() -> None:
    """Raises `KeyboardInterrupt` if a signal arrived inside `stop_on_signals()` (its first one may have been
    swallowed where Python could not raise it)."""
    if _received:
        raise KeyboardInterrupt


def exit_code() -> int:
    """128 + the signal's number, as a shell reports it: 130 for Ctrl-C (also without a signal), 143 for SIGTERM."""
    return 128 + (received() or signal.SIGINT)


def describe() -> str:
    """"interrupted" for Ctrl-C, "stopped by SIGTERM" for SIGTERM: the start of the command's last line."""
    return "stopped by SIGTERM" if received() == signal.SIGTERM else "interrupted"
