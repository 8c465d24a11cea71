"""XLA:CPU settings for fast convolutions, applied when the package is imported.

On the CPU, XLA (jaxlib 0.10) hands convolutions to its YNNPACK library by default, which runs
the paper's CNN several times slower than XLA's own Eigen convolutions. Measured on this
project's 2-core machine: a VALID 3x3 convolution of a ``(128, 32, 32, 32)`` batch takes 110 ms
through YNNPACK and 12 ms through Eigen, and the SpaceNet CNN train step 490 ms against about
150 ms (``python -m benchmarks.cnn``). The XLA flag ``--xla_cpu_experimental_ynn_fusion_type=``
(an empty list) turns YNNPACK fusions off; the MLP's matrix products run as fast without them.

The flag has to be in ``XLA_FLAGS`` before JAX starts its CPU backend, and ``jax.jit``'s per
function ``compiler_options`` cannot carry it (they are refused on any jit called inside another
jit, which would break every user's own ``jax.jit`` around this package's functions). So
``import spacenet_jax`` adds it to ``XLA_FLAGS``:

* only for jaxlib versions known to have the flag (XLA aborts the process on an unknown one);
* not if ``XLA_FLAGS`` already says anything about YNNPACK fusions (yours wins);
* not if ``SPACENET_XLA_DEFAULTS=1`` (XLA's defaults, e.g. to compare);
* and it can only take effect if no JAX computation ran before the import: then a warning says
  so and how to get the fast path (import ``spacenet_jax`` first, or set the flag yourself).

It is an XLA:CPU flag: GPU and TPU compilations ignore it.
"""

from __future__ import annotations

import os
import warnings

#: The flag (and value) added to ``XLA_FLAGS``.
CPU_FLAG = "--xla_cpu_experimental_ynn_fusion_type="
#: jaxlib versions known to have the flag: from this one ...
_FIRST_JAXLIB = (0, 10, 2)
#: ... up to (not including) this one, until checked again: an unknown flag aborts XLA.
_FIRST_UNCHECKED_JAXLIB = (0, 11, 0)


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.split(".")[:3]:
        digits = ""
        for ch in part:
            if not ch.isdigit():
                break
            digits += ch
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def flag_supported(jaxlib_version: str) -> bool:
    """Whether this jaxlib version is known to accept ``CPU_FLAG``."""
    return _FIRST_JAXLIB <= _version(jaxlib_version) < _FIRST_UNCHECKED_JAXLIB


def with_cpu_flag(xla_flags: str, jaxlib_version: str) -> str:
    """``XLA_FLAGS`` with ``CPU_FLAG`` added, or unchanged where it must not be added."""
    if "xla_cpu_experimental_ynn_fusion_type" in xla_flags:
        return xla_flags
    if not flag_supported(jaxlib_version):
        return xla_flags
    return f"{xla_flags} {CPU_FLAG}".strip()


def configure_xla() -> bool:
    """Add ``CPU_FLAG`` to ``os.environ['XLA_FLAGS']`` (see the module docstring).

    Returns whether the flag is in force for this process's CPU backend.
    """
    if os.environ.get("SPACENET_XLA_DEFAULTS", "").strip().lower() in ("1", "true", "yes"):
        return False
    import jaxlib

    current = os.environ.get("XLA_FLAGS", "")
    wanted = with_cpu_flag(current, jaxlib.__version__)
    if wanted == current:
        return CPU_FLAG in current.split()
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        warnings.warn(
            "spacenet_jax was imported after JAX started its backend, so XLA:CPU keeps "
            "YNNPACK convolutions, which make CNN training about 3x slower on a CPU. Import "
            f"spacenet_jax before running any JAX code, or set XLA_FLAGS='{CPU_FLAG}'.",
            stacklevel=3,
        )
        return False
    os.environ["XLA_FLAGS"] = wanted
    return True
