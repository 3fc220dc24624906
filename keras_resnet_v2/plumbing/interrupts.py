"""Ctrl-C and SIGTERM stop a command for sure: at once, or at the next training step.

Python turns SIGINT into a `KeyboardInterrupt` wherever the main thread is running. Inside a
garbage-collector callback (JAX registers one, and Keras imports JAX whenever it is installed) the
exception is printed as "Exception ignored in ..." and lost, and the run goes on as if nothing had
happened. `stop_on_signals()` installs a handler for SIGINT and SIGTERM (what containers and
preemptible machines send) that records the signal and raises `KeyboardInterrupt`;
`raise_if_stopped()`, which the training loop calls between steps, raises it again if it was lost.
A signal that arrives while a garbage-collector callback runs is only recorded: raised there it would
be lost anyway, after Python printed a traceback of it, which a user would read as a crash.
Outside `stop_on_signals()` (a notebook, a library caller) nothing is recorded and nothing changes.

Example:
    >>> with stop_on_signals():
    ...     try:
    ...         train()               # calls raise_if_stopped() between steps
    ...     except KeyboardInterrupt:
    ...         code = exit_code()    # 130 for Ctrl-C, 143 for SIGTERM
"""

from __future__ import annotations

import contextlib
import gc
import signal
import threading
from typing import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []


def _in_gc_callback(frame) -> bool:
    """True if `frame` is (called from) one of `gc.callbacks`."""
    codes = {getattr(getattr(callback, "__func__", callback), "__code__", None) for callback in gc.callbacks}
    while frame is not None:
        if frame.f_code in codes:
            return True
        frame = frame.f_back
    return False


def _handler(signum: int, frame) -> None:
    _received.append(signum)
    if not _in_gc_callback(frame):  # else raise_if_stopped() raises it, at the next training step
        raise KeyboardInterrupt


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise `KeyboardInterrupt` here and are remembered until the block ends."""
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return
    previous = {signum: signal.signal(signum, _handler) for signum in SIGNALS}
    _received.clear()
    try:
        yield
    finally:  # read `exit_code()` inside the block: after it, nothing is remembered
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _received.clear()


def received() -> int | None:
    """The first signal that arrived inside `stop_on_signals()` (None: none did)."""
    return _received[0] if _received else None


def raise_if_stopped() -> None:
    """Raises `KeyboardInterrupt` if a signal arrived and its first `KeyboardInterrupt` was swallowed."""
    if _received:
        raise KeyboardInterrupt


def exit_code() -> int:
    """128 + the signal's number, as a shell reports it: 130 for Ctrl-C (also without a signal), 143 for SIGTERM."""
    return 128 + (received() or signal.SIGINT)


def describe() -> str:
    """"interrupted" for Ctrl-C, "stopped by SIGTERM" for SIGTERM: the start of the command's last line."""
    return "stopped by SIGTERM" if received() == signal.SIGTERM else "interrupted"
