"""Ctrl-C and SIGTERM during a run: saves finish, then one line says what is kept and how to
continue.

* ``interrupts_as_keyboard_interrupt``: SIGTERM (a job scheduler, ``kill``) raises
  ``KeyboardInterrupt`` like Ctrl-C does, so both end the same way.
* ``deferred_interrupts``: inside it (a checkpoint or results.json being written), Ctrl-C and
  SIGTERM wait until the write is complete, then interrupt.
* ``resume_command``: the command that continues the run.
"""

from __future__ import annotations

import contextlib
import shlex
import signal
import sys
import threading
from collections.abc import Iterator

#: Exit status of a run stopped by a signal (128 + SIGINT, as shells report Ctrl-C).
INTERRUPTED_STATUS = 130

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def interrupts_as_keyboard_interrupt() -> Iterator[None]:
    """SIGINT and SIGTERM raise ``KeyboardInterrupt`` inside the block (a no-op outside the
    main thread, where Python cannot install signal handlers)."""
    if not _main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise_interrupt) for s in _SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Run the block to its end even if SIGINT or SIGTERM arrive; then raise
    ``KeyboardInterrupt`` if one did. Wrap writes that must not be cut in half."""
    if not _main_thread():
        yield
        return
    received: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: received.append(signum))
                for s in _SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received:
        raise KeyboardInterrupt(signal.Signals(received[0]).name)


def resume_command(argv: list[str] | None = None) -> str:
    """The command line that continues this run: the process's own, with ``--resume``."""
    args = list(sys.orig_argv if argv is None else argv)
    if "--resume" not in args:
        args.append("--resume")
    return shlex.join(args)
