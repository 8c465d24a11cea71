"""One run per folder: an exclusive lock on an output or checkpoint folder, held for the run.

Two runs writing into one ``--out`` or one seed's checkpoint folder at the same time would
replace each other's results and checkpoints without a word. ``lock_folder`` takes an
exclusive lock on a folder (``filelock``: ``flock`` on the file ``LOCK_NAME`` inside it) and
records who holds it (pid, host, start time, command) in ``OWNER_NAME`` beside it, so that a
second run is refused at once with a ``FolderInUseError`` naming the folder and the holder.

The operating system drops the lock when its process ends, however it ends (SIGKILL, a power
cut of a network client aside), so the lock of a dead run never blocks the next one: its owner
file is simply overwritten. ``LOCK_NAME`` stays in the folder (an empty file: removing it
while another process waits on it would let two runs in); ``OWNER_NAME`` is removed on release.

A command's ``main`` decorated with ``releases_locks`` releases every lock taken during the
call when it returns or raises; a lock taken outside such a call is held until ``release`` or
the end of the process.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import os
import socket
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock, Timeout

#: The lock file inside a locked folder.
LOCK_NAME = ".spacenet.lock"
#: Who holds the lock (JSON: pid, host, started, command), removed on release.
OWNER_NAME = ".spacenet.lock.owner"

F = TypeVar("F", bound=Callable[..., Any])
#: The calls of ``releases_locks`` in progress, each with the locks taken during it.
_SCOPES: list[list[FolderLock]] = []
#: Every lock held (a dropped ``FileLock`` would release itself when garbage collected).
_HELD: set[FolderLock] = set()


class FolderLockError(RuntimeError):
    """A folder that cannot be locked: it cannot be created or written."""


class FolderInUseError(FolderLockError):
    """Another run (another process, or another lock in this one) holds the folder."""


def owner_record() -> dict[str, Any]:
    """Who this process is: pid, host, start of the lock (UTC, ISO 8601) and command line."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
    }


def read_owner(folder: str | Path) -> dict[str, Any] | None:
    """The owner record of a locked folder, or ``None`` if absent or unreadable."""
    try:
        owner = json.loads((Path(folder) / OWNER_NAME).read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def describe_owner(owner: dict[str, Any] | None) -> str:
    """'pid 123 on host h, started 2026-...: python -m ...', or that it is unknown."""
    if not owner:
        return "pid and host unknown"
    text = f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')}"
    if owner.get("started"):
        text += f", started {owner['started']}"
    if owner.get("command"):
        text += f": {owner['command']}"
    return text


class FolderLock:
    """An exclusive lock on one folder; ``release`` (or leaving a ``with`` block) frees it."""

    def __init__(self, folder: Path, lock: FileLock | None) -> None:
        self.folder = folder
        self._lock = lock

    @property
    def held(self) -> bool:
        return self._lock is not None and self._lock.is_locked

    def release(self) -> None:
        """Remove the owner record and release the lock (a no-op if already released)."""
        if not self.held:
            return
        with contextlib.suppress(OSError):  # still ours: nobody else writes it while we hold
            (self.folder / OWNER_NAME).unlink()
        self._lock.release()
        _HELD.discard(self)

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_folder(folder: str | Path, *, what: str = "files", other: str = "another folder"
                ) -> FolderLock:
    """Create ``folder`` if needed and lock it for this run, without waiting.

    Args:
      folder: the folder (an ``--out``, one seed's checkpoint folder).
      what: what two runs would overwrite there, for the message ("results", "checkpoints").
      other: how to name another folder, for the message ("another --out").

    Raises:
      FolderInUseError: another run holds it (the message names the folder and that run's pid,
        host, start and command when known).
      FolderLockError: the folder cannot be created, or the lock file cannot be written.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = FileLock(folder / LOCK_NAME)
        try:
            lock.acquire(timeout=0)
        except NotImplementedError:  # filelock 3 on a filesystem without flock
            warnings.warn(f"cannot lock {folder} (its filesystem has no flock): nothing stops "
                          f"another run from writing there at the same time", stacklevel=2)
            return _in_scope(FolderLock(folder, None))
        except Timeout:
            raise FolderInUseError(
                f"{folder} is in use by another run ({describe_owner(read_owner(folder))}); "
                f"two runs there would overwrite each other's {what}. Wait until it ends, or "
                f"use {other}"
            ) from None
        try:
            tmp = folder / f"{OWNER_NAME}.{os.getpid()}.tmp"
            tmp.write_text(json.dumps(owner_record()))
            os.replace(tmp, folder / OWNER_NAME)
        except OSError:
            lock.release()
            raise
    except OSError as err:
        raise FolderLockError(
            f"cannot lock {folder}: {err}; make it (or its parent) a writable folder, or use "
            f"{other}"
        ) from err
    return _in_scope(FolderLock(folder, lock))


def _in_scope(lock: FolderLock) -> FolderLock:
    _HELD.add(lock)
    if _SCOPES:
        _SCOPES[-1].append(lock)
    return lock


def releases_locks(fn: F) -> F:
    """Decorate a command's ``main``: the folder locks taken during a call are released when
    it returns or raises (``SystemExit`` included), the last taken first."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        taken: list[FolderLock] = []
        _SCOPES.append(taken)
        try:
            return fn(*args, **kwargs)
        finally:
            _SCOPES.remove(taken)
            for lock in reversed(taken):
                lock.release()

    return wrapper  # type: ignore[return-value]
