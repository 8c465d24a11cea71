"""``results.json``: written safely, merged with the runs it already holds, and stamped with
where its numbers come from.

* ``write_json_atomic``: a temporary file, fsync, rename: a crash never leaves half a file nor
  a stray temporary one, and the file gets the mode the umask allows (not ``mkstemp``'s 0600).
* ``check_output_folder``: an output folder is writable, checked before any work.
* ``read_finished_runs``: the runs a ``results.json`` already holds for this exact
  configuration, read by ``spacenet_jax.storage.results_schema.load_results`` (structure and
  ``schema_version`` checked); anything else raises ``ResultsFileError``.
* ``merge_runs``: the runs held, plus the new ones.
* ``provenance``: package, git commit, library versions, device, command line and date.

Nothing here exits the process: the command line turns ``ResultsFileError`` into its
``error: ...`` line and exit status 2.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from spacenet_jax.core.config import (
    SpaceNetConfig,
    as_saved,
    describe_differences,
    with_default_fields,
)
from spacenet_jax.storage.results_schema import ResultsFormatError, load_results


class ResultsFileError(ValueError):
    """An output folder or ``results.json`` this run cannot use; the message says what is
    wrong and how to fix it (raised before any work)."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write ``payload`` as JSON to ``path`` through a temporary file in the same folder, fsync
    and rename, so that a crash leaves either the old file or the new one.

    The file is readable as the umask allows (``0o666 & ~umask``). If writing fails, the
    temporary file is removed and the error propagates.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def check_output_folder(folder: Path, flag: str = "--out") -> None:
    """Refuse (``ResultsFileError``), before any work, an output folder that is a file or
    cannot be created or written: a long run must not end by failing to save its results."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ResultsFileError(f"{flag} {folder} is a file, not a folder; give a folder (it "
                               f"is created if missing)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as err:
        raise ResultsFileError(
            f"cannot write in {flag} {folder} ({err.strerror or err}); choose a folder you "
            f"can write to, or fix its permissions or free disk space"
        ) from None


def read_finished_runs(path: Path | None, config: SpaceNetConfig, benchmark: str) -> list[dict]:
    """The runs ``path`` (a ``results.json``) already holds, all of ``config`` and
    ``benchmark``; ``[]`` if there is no such file.

    Raises ``ResultsFileError`` if the file is unreadable, is not a results.json, or holds a
    run of another configuration or benchmark: mixing them would make its summary
    meaningless, and overwriting them would lose them.
    """
    if path is None or not path.exists():
        return []
    try:
        payload = load_results(path)
    except ResultsFormatError as err:
        fix = "" if err.upgradable else "; move it away or choose another --out"
        raise ResultsFileError(f"{err}{fix}") from None
    want = as_saved(config)
    for run in payload["runs"]:
        saved = with_default_fields(run["config"])
        if run["benchmark"] != benchmark or saved != want:
            what = ([f"benchmark {run['benchmark']!r}, this run {benchmark!r}"]
                    if run["benchmark"] != benchmark else [])
            what += describe_differences(saved, want, "there")
            raise ResultsFileError(
                f"{path} holds runs of another configuration (seed {run['seed']}; "
                f"{'; '.join(what)}); move it away or choose another --out"
            )
    return payload["runs"]


def check_seeds_not_done(path: Path | None, finished: list[dict], seeds: list[int],
                         resume: bool) -> None:
    """Without ``resume``, refuse (``ResultsFileError``) to run a seed that ``path`` already
    holds."""
    done = sorted({r["seed"] for r in finished} & set(seeds))
    if done and not resume:
        raise ResultsFileError(
            f"{path} already holds seed(s) {', '.join(map(str, done))} of this configuration; "
            f"add --resume to keep them and run only the others, or choose another --out"
        )


def merge_runs(finished: list[dict], new: dict[int, dict]) -> list[dict]:
    """The runs of a results.json after a run: the ones it held, plus the new ones (a new run
    of the same seed replaces the old), ordered by seed."""
    runs = {r["seed"]: r for r in finished}
    runs.update(new)
    return [runs[s] for s in sorted(runs)]


def _git_commit(where: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{out}{'+dirty' if dirty else ''}" if out else None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def provenance(argv: list[str] | None = None) -> dict[str, Any]:
    """Where a result comes from: package and library versions, the git commit of the source
    (``+dirty`` with uncommitted changes; None outside a checkout), the JAX backend and
    devices, the host, the command line (the process's own, or ``main`` and ``argv`` when
    called from Python) and the UTC date."""
    import jax

    import spacenet_jax

    devices = jax.devices()
    return {
        "spacenet_jax": spacenet_jax.__version__,
        "git_commit": _git_commit(Path(spacenet_jax.__file__).resolve().parent),
        "versions": {p: _version(p) for p in ("jax", "jaxlib", "flax", "optax", "chex",
                                                "orbax-checkpoint", "numpy")},
        "python": platform.python_version(),
        "backend": jax.default_backend(),
        "devices": f"{len(devices)} x {devices[0].device_kind}",
        "host": platform.node(),
        "command": shlex.join(sys.orig_argv if argv is None else ["main", *argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
