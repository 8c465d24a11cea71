"""The jitted functions a process calls at the top level, with their executables kept across
processes.

JAX's persistent compilation cache (``running.compile_cache``) saves compiling, but every
process still traces and lowers each program to find it there: for split MNIST's epoch program
about 0.5 s, and about 1 s for the handful of programs a one-seed run calls, a fifth of the
whole process. ``program`` wraps a jitted function so that, when an executable store is
installed (``set_executable_store``, which ``running.compile_cache`` does with a folder), a call
with arguments of a known signature runs the stored executable directly (about 0.07 s to load)
without tracing at all.

The key of an executable is everything that decides the program: the function, its static
arguments (the configuration), the tree structure, shapes, dtypes and placements of the others,
the versions of jax, jaxlib, optax and flax, the backend and its devices, ``XLA_FLAGS``, the
JAX settings that change lowering, and a fingerprint of this package's own source (so editing
the code never runs a stale executable). A call inside another trace (``jax.vmap`` of
``begin_task``, a user's ``jax.jit``) goes to the jitted function as usual. Without a store the
wrapper calls the jitted function and nothing else.

This module holds no files: the store (``ExecutableStore``: ``load(key)`` / ``save(key,
payload)``) is given by the caller.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
import pathlib
import pickle
from collections.abc import Callable
from typing import Any, Protocol

import jax

#: Settings of JAX that change what a function lowers to.
_JAX_SETTINGS = ("jax_enable_x64", "jax_default_matmul_precision", "jax_numpy_rank_promotion",
                 "jax_threefry_partitionable", "jax_default_prng_impl")


class ExecutableStore(Protocol):
    """Where serialized executables are kept: bytes by key (a hex string)."""

    def load(self, key: str) -> bytes | None: ...

    def save(self, key: str, payload: bytes) -> None: ...


_store: ExecutableStore | None = None


def set_executable_store(store: ExecutableStore | None) -> None:
    """Install (or, with None, remove) the store every ``program`` reads and writes."""
    global _store
    _store = store


@functools.cache
def _source_fingerprint() -> str:
    """sha256 of every source file of the package (the code a program is traced from)."""
    root = pathlib.Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _library_versions() -> str:
    import flax
    import jaxlib
    import optax

    return f"jax {jax.__version__} jaxlib {jaxlib.__version__} optax {optax.__version__} " \
           f"flax {flax.__version__}"


@functools.cache
def _environment() -> str:
    devices = jax.devices()
    settings = ",".join(f"{name}={getattr(jax.config, name, None)}" for name in _JAX_SETTINGS)
    return "|".join([
        _library_versions(), jax.default_backend(), str(len(devices)),
        devices[0].device_kind, os.environ.get("XLA_FLAGS", ""), settings,
        _source_fingerprint(),
    ])


def _leaf_signature(leaf: Any) -> str:
    aval = jax.api_util.shaped_abstractify(leaf)
    sharding = getattr(leaf, "sharding", None)
    return f"{aval.str_short(short_dtypes=True)}{'w' if aval.weak_type else ''}@{sharding}"


class Program:
    """A jitted function whose executables an ``ExecutableStore`` keeps (see the module).

    Calling it is calling the jitted function; every other attribute (``lower``, ``trace``,
    ...) is the jitted function's.
    """

    def __init__(self, jitted: Callable, static_argnames: tuple[str, ...]) -> None:
        self._jitted = jitted
        self._signature = inspect.signature(inspect.unwrap(jitted))
        self._static = static_argnames
        self._name = f"{jitted.__module__}.{jitted.__qualname__}"
        self._compiled: dict[str, Any] = {}
        functools.update_wrapper(self, jitted)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._jitted, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if _store is None:
            return self._jitted(*args, **kwargs)
        bound = self._signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values = list(bound.arguments.values())
        names = list(bound.arguments)
        dynamic = [v for n, v in zip(names, values, strict=True) if n not in self._static]
        leaves, tree = jax.tree.flatten(dynamic)
        if any(isinstance(leaf, jax.core.Tracer) for leaf in leaves):
            return self._jitted(*args, **kwargs)  # inside another trace: inline as usual
        static = [repr(v) for n, v in zip(names, values, strict=True) if n in self._static]
        key = hashlib.sha256("\n".join([
            self._name, *static, str(tree), *map(_leaf_signature, leaves), _environment(),
        ]).encode()).hexdigest()
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = self._load_or_compile(key, values)
            self._compiled[key] = compiled
        return compiled(*dynamic)

    def _load_or_compile(self, key: str, values: list[Any]) -> Any:
        from jax.experimental import serialize_executable

        payload = _store.load(key)
        if payload is not None:
            try:
                blob, in_tree, out_tree = pickle.loads(payload)
                return serialize_executable.deserialize_and_load(blob, in_tree, out_tree)
            except Exception:  # an unreadable entry: compile and store it anew
                pass
        # Compiled anew, not read from JAX's persistent cache: an executable loaded from there
        # serializes without its code on XLA:CPU ("Function ... not found" when run again).
        lowered = self._jitted.lower(*values)
        persistent = jax.config.jax_enable_compilation_cache
        jax.config.update("jax_enable_compilation_cache", False)
        try:
            compiled = lowered.compile()
        finally:
            jax.config.update("jax_enable_compilation_cache", persistent)
        try:
            blob, in_tree, out_tree = serialize_executable.serialize(compiled)
            _store.save(key, pickle.dumps((blob, in_tree, out_tree)))
        except Exception:  # a backend or program that cannot be serialized: run it as it is
            pass
        return compiled


def program(static_argnames: tuple[str, ...] = (), **jit_kwargs: Any) -> Callable:
    """``jax.jit(fn, static_argnames=..., **jit_kwargs)`` as a ``Program``."""

    def wrap(fn: Callable) -> Program:
        return Program(jax.jit(fn, static_argnames=static_argnames, **jit_kwargs),
                       static_argnames)

    return wrap
