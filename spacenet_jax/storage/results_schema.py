"""The ``results.json`` format: one typed definition, its JSON Schema, and the one loader.

A ``results.json`` is ``{"schema_version": 1, "runs": [RunRecord, ...], "summary": Summary}``
(see ``results.json`` in the README). ``spacenet_jax.running.runner.make_record`` builds the runs,
``running.study.summarize_runs`` the summary, and :func:`results_payload` stamps the
version; every reader (merging, resuming, figures, reports, the notebook) goes through
:func:`load_results`, which checks the structure and the version before anything is read.

:data:`JSON_SCHEMA` is the same definition as a JSON Schema (draft 2020-12), for other tools;
``docs/results.schema.json`` is that schema as a file (``python -m
spacenet_jax.storage.results_schema --write-schema docs/results.schema.json``; a test checks the two
agree and that a real run's file validates). A file written before ``schema_version`` existed
is refused with the command that upgrades it (:func:`upgrade_results`): its content is the
version-1 format without the version field.

Accuracies are fractions in ``[0, 1]``; tasks and layers are indexed from 0 in the arrays.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, TypedDict

#: The version :func:`results_payload` writes and :func:`load_results` reads.
SCHEMA_VERSION = 1


class ResultsFormatError(ValueError):
    """A ``results.json`` that cannot be read as this version's format; the message says what
    is wrong and how to fix it. ``upgradable``: the file only lacks ``schema_version``, and
    ``python -m spacenet_jax.storage.results_schema --upgrade`` (named in the message) fixes it."""

    def __init__(self, message: str, upgradable: bool = False):
        super().__init__(message)
        self.upgradable = upgradable


class Seconds(TypedDict):
    total: float  # the whole run (for a vmapped batch: the batch's)
    per_task: list[float]


class ValidationRecord(TypedDict):
    """The held-out training examples (``--validation N``), measured like the test set."""

    acc_matrix: list[list[float | None]]
    task_il_acc_matrix: list[list[float | None]]
    final_task_acc: list[float]
    final_avg_acc: float
    final_task_il_avg_acc: float


class _RunRequired(TypedDict):
    benchmark: str
    method: str
    seed: int
    config: dict[str, Any]  # SpaceNetConfig.to_dict()
    tasks_learned: int
    acc_matrix: list[list[float | None]]  # [i][j]: task j after task i; None for j > i
    final_task_acc: list[float]
    final_avg_acc: float  # the paper's metric
    final_overall_acc: float
    task_il_acc_matrix: list[list[float | None]]
    final_task_il_acc: list[float | None]
    final_task_il_avg_acc: float | None
    forgetting: list[float] | None  # None for joint training
    avg_forgetting: float | None
    backward_transfer: float | None
    connections_per_task: list[list[int]] | None  # [task][layer]; None for dense methods
    connections_used: list[int]
    free_neurons: list[list[int]]  # [after task][hidden layer]
    seconds: Seconds


class RunRecord(_RunRequired, total=False):
    """One seed's run: an entry of ``results.json``'s ``runs``."""

    batch: list[int]  # the seeds that ran together as one vmapped program
    validation: ValidationRecord
    provenance: dict[str, Any]  # versions, git commit, devices, host, command, date
    reevaluated_from: str  # experiments.reevaluate: the checkpoint folder


class Statistic(TypedDict):
    """``spacenet_jax.running.metrics.summarize`` of a value over seeds."""

    n: int
    mean: float
    std: float
    sem: float
    values: list[float]


class _SummaryRequired(TypedDict):
    final_avg_acc: Statistic
    final_task_il_avg_acc: Statistic | None
    final_overall_acc: Statistic
    avg_forgetting: Statistic | None
    backward_transfer: Statistic | None
    final_task_acc_mean: list[float]
    seeds: list[int]
    seconds_per_run: Statistic


class Summary(_SummaryRequired, total=False):
    """Over the runs of the file."""

    validation: dict[str, Statistic]  # final_avg_acc, final_task_il_avg_acc
    benchmark: str
    method: str
    combined_from: list[str]  # experiments.combine: the results files joined


class Results(TypedDict):
    """The whole ``results.json``."""

    schema_version: int
    runs: list[RunRecord]
    summary: Summary


def results_payload(runs: list[RunRecord], summary: Summary) -> Results:
    """The content of a ``results.json`` of ``runs`` and their ``summary``."""
    return {"schema_version": SCHEMA_VERSION, "runs": runs, "summary": summary}


# --- the JSON Schema -------------------------------------------------------------------------

_NUMBER = {"type": "number"}
_FRACTION = {"type": "number", "minimum": 0, "maximum": 1}
_INT = {"type": "integer"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _array(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


def _object(required: dict[str, Any], optional: dict[str, Any] | None = None,
            extra: bool = True) -> dict[str, Any]:
    return {"type": "object", "required": sorted(required),
            "properties": {**required, **(optional or {})}, "additionalProperties": extra}


_MATRIX = _array(_array(_nullable(_FRACTION)))
_STATISTIC = _object({"n": _INT, "mean": _NUMBER, "std": _NUMBER, "sem": _NUMBER,
                      "values": _array(_NUMBER)})
_VALIDATION = _object({"acc_matrix": _MATRIX, "task_il_acc_matrix": _MATRIX,
                       "final_task_acc": _array(_FRACTION), "final_avg_acc": _FRACTION,
                       "final_task_il_avg_acc": _FRACTION})
_RUN = _object(
    {
        "benchmark": {"type": "string"}, "method": {"type": "string"}, "seed": _INT,
        "config": {"type": "object"}, "tasks_learned": _INT, "acc_matrix": _MATRIX,
        "final_task_acc": _array(_FRACTION), "final_avg_acc": _FRACTION,
        "final_overall_acc": _FRACTION, "task_il_acc_matrix": _MATRIX,
        "final_task_il_acc": _array(_nullable(_FRACTION)),
        "final_task_il_avg_acc": _nullable(_FRACTION),
        "forgetting": _nullable(_array(_NUMBER)), "avg_forgetting": _nullable(_NUMBER),
        "backward_transfer": _nullable(_NUMBER),
        "connections_per_task": _nullable(_array(_array(_INT))),
        "connections_used": _array(_INT), "free_neurons": _array(_array(_INT)),
        "seconds": _object({"total": _NUMBER, "per_task": _array(_NUMBER)}),
    },
    {"batch": _array(_INT), "validation": _VALIDATION, "provenance": {"type": "object"},
     "reevaluated_from": {"type": "string"}},
)
_SUMMARY = _object(
    {
        "final_avg_acc": _STATISTIC, "final_task_il_avg_acc": _nullable(_STATISTIC),
        "final_overall_acc": _STATISTIC, "avg_forgetting": _nullable(_STATISTIC),
        "backward_transfer": _nullable(_STATISTIC), "final_task_acc_mean": _array(_NUMBER),
        "seeds": _array(_INT), "seconds_per_run": _STATISTIC,
    },
    {"validation": {"type": "object", "additionalProperties": _STATISTIC},
     "benchmark": {"type": "string"}, "method": {"type": "string"},
     "combined_from": _array({"type": "string"})},
)
#: The format as a JSON Schema (draft 2020-12); ``docs/results.schema.json`` holds it.
JSON_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "spacenet-jax results.json",
    "description": "Runs of one configuration of a SpaceNet experiment (one per seed) and "
                   "their summary over seeds. Accuracies are fractions.",
    **_object({"schema_version": {"const": SCHEMA_VERSION}, "runs": _array(_RUN),
               "summary": _SUMMARY}, extra=False),
}


# --- checking and loading ----------------------------------------------------------------------

def _type_ok(value: Any, schema: dict[str, Any]) -> bool:
    """Whether ``value`` has the JSON type ``schema`` names (top level only)."""
    if "anyOf" in schema:
        return any(_type_ok(value, s) for s in schema["anyOf"])
    kind = schema.get("type")
    if kind is None:
        return True
    if kind == "null":
        return value is None
    if isinstance(value, bool):
        return kind == "boolean"
    python = {"string": str, "integer": int, "number": (int, float), "object": dict,
              "array": list}[kind]
    return isinstance(value, python)


def structure_problem(payload: Any) -> str | None:
    """What is wrong with the structure of a parsed ``results.json`` (its runs and their
    fields' types, as :data:`JSON_SCHEMA` says), or None. The version is not looked at."""
    if not isinstance(payload, dict) or not isinstance(payload.get("runs"), list):
        return "it has no list of runs under the key 'runs'"
    for i, run in enumerate(payload["runs"]):
        if not isinstance(run, dict):
            return f"run {i + 1} is not an object"
        for key in _RUN["properties"]:
            if key not in _RUN["required"]:
                continue
            if key not in run or not _type_ok(run[key], _RUN["properties"][key]):
                return f"run {i + 1} has no valid {key!r}"
    if payload["runs"] and not isinstance(payload.get("summary"), dict):
        return "it has no summary object under the key 'summary'"
    return None


def check_results(payload: Any, where: str = "results.json") -> Results:
    """``payload`` as :class:`Results`; raises :class:`ResultsFormatError` naming ``where``."""
    problem = structure_problem(payload)
    if problem is not None:
        raise ResultsFormatError(f"{where} is not a results.json ({problem})")
    version = payload.get("schema_version")
    if version is None:
        raise ResultsFormatError(
            f"{where} was written by an older spacenet-jax, before results.json had a "
            f"schema_version; upgrade it with: python -m "
            f"spacenet_jax.storage.results_schema --upgrade {where}",
            upgradable=True,
        )
    if version != SCHEMA_VERSION:
        raise ResultsFormatError(
            f"{where} has schema_version {version!r}, this spacenet-jax reads version "
            f"{SCHEMA_VERSION}; use the spacenet-jax that wrote it, or another --out"
        )
    return payload


def load_results(path: str | Path) -> Results:
    """The checked content of the ``results.json`` at ``path``.

    Raises:
      FileNotFoundError: there is no file at ``path``.
      ResultsFormatError: unreadable, not JSON, not a results.json, an old file without
        ``schema_version`` (the message gives the upgrade command) or another version.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise
    except OSError as err:
        raise ResultsFormatError(f"cannot read {path} ({err.strerror or err})") from None
    try:
        payload = json.loads(text)
    except ValueError as err:
        raise ResultsFormatError(f"cannot read {path} ({err})") from None
    return check_results(payload, str(path))


def upgrade_results(path: str | Path) -> bool:
    """Stamp a results.json written before ``schema_version`` existed with version 1 (its
    content is otherwise the same format); True if it was changed, False if already current.

    Raises ``ResultsFormatError`` if the file is not a results.json at all."""
    path = Path(path)
    payload = json.loads(path.read_text())
    problem = structure_problem(payload)
    if problem is not None:
        raise ResultsFormatError(f"{path} is not a results.json ({problem})")
    if payload.get("schema_version") == SCHEMA_VERSION:
        return False
    if payload.get("schema_version") is not None:
        check_results(payload, str(path))  # another version: refused with its message
    upgraded = {"schema_version": SCHEMA_VERSION, **payload}
    tmp = path.with_name(f".{path.name}.upgrade")
    tmp.write_text(json.dumps(upgraded, indent=2) + "\n")
    tmp.replace(path)
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="The results.json format: check, upgrade, schema.")
    p.add_argument("files", nargs="*", type=Path, help="results.json files to check")
    p.add_argument("--upgrade", action="store_true",
                   help="stamp files written before schema_version existed with version 1")
    p.add_argument("--write-schema", type=Path, metavar="FILE",
                   help="write the JSON Schema to FILE (docs/results.schema.json)")
    args = p.parse_args(argv)
    if args.write_schema is not None:
        args.write_schema.write_text(json.dumps(JSON_SCHEMA, indent=2) + "\n")
        print(f"wrote {args.write_schema}")
    status = 0
    for path in args.files:
        try:
            if args.upgrade and upgrade_results(path):
                print(f"{path}: upgraded to schema_version {SCHEMA_VERSION}")
            runs = load_results(path)["runs"]
            print(f"{path}: schema_version {SCHEMA_VERSION}, {len(runs)} run(s), valid")
        except (OSError, ResultsFormatError, ValueError) as err:
            print(f"error: {err}")
            status = 2
    return status


if __name__ == "__main__":
    raise SystemExit(main())
