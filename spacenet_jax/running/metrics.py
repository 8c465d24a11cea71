"""Continual-learning metrics computed from an accuracy matrix.

``acc[i][j]`` is the accuracy on task j's test set after training task i (``None`` for j > i),
as in Avalanche / Mammoth and GEM (Lopez-Paz & Ranzato, 2017).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Matrix = Sequence[Sequence[float | None]]


def _as_array(acc: Matrix) -> np.ndarray:
    a = np.array([[np.nan if v is None else float(v) for v in row] for row in acc], float)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"accuracy matrix must be square T x T, got shape {a.shape}")
    return a


def final_accuracies(acc: Matrix) -> list[float]:
    """The last row: each task's accuracy after the last task."""
    return [float(v) for v in _as_array(acc)[-1]]


def average_accuracy(acc: Matrix) -> float:
    """Mean of the final per-task accuracies (the paper's metric)."""
    return float(np.mean(_as_array(acc)[-1]))


def forgetting(acc: Matrix) -> list[float]:
    """Per task j < T-1: best accuracy ever (after any of tasks j..T-1) minus the final one.

    Never negative: a task that only improved has forgetting 0.
    """
    a = _as_array(acc)
    T = a.shape[0]
    return [float(np.nanmax(a[j:T, j]) - a[T - 1, j]) for j in range(T - 1)]


def average_forgetting(acc: Matrix) -> float:
    """Mean of ``forgetting`` (0.0 for a single task)."""
    values = forgetting(acc)
    return float(np.mean(values)) if values else 0.0


def backward_transfer(acc: Matrix) -> float:
    """BWT: mean over j < T-1 of ``acc[T-1][j] - acc[j][j]`` (negative means forgetting)."""
    a = _as_array(acc)
    T = a.shape[0]
    if T < 2:
        return 0.0
    return float(np.mean([a[T - 1, j] - a[j, j] for j in range(T - 1)]))


def summarize(values: Sequence[float]) -> dict[str, float | int | list[float]]:
    """Mean, sample standard deviation, standard error and the values themselves."""
    v = np.asarray(values, float)
    n = len(v)
    std = float(np.std(v, ddof=1)) if n > 1 else 0.0
    return {
        "n": n,
        "mean": float(np.mean(v)) if n else float("nan"),
        "std": std,
        "sem": std / np.sqrt(n) if n > 1 else 0.0,
        "values": [float(x) for x in v],
    }


def percent(fraction: float | None, digits: int = 1) -> str:
    """An accuracy for people: a fraction (as the JSON files hold it) shown as a percentage
    with ``digits`` decimals, without the sign (``0.9876`` -> ``"98.8"``); ``"-"`` for None."""
    return "-" if fraction is None else f"{100 * fraction:.{digits}f}"
