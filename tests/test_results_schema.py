"""The results.json format: one typed definition, its JSON Schema file, one loader for every
reader, and a clear refusal (with the upgrade command) of files from before schema_version."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
from conftest import TINY, synthetic_dataset

from experiments.common import main
from experiments.figures import FiguresError, read_results
from spacenet_jax.storage import results_schema
from spacenet_jax.storage.results_io import ResultsFileError, read_finished_runs
from spacenet_jax.storage.results_schema import (
    JSON_SCHEMA,
    SCHEMA_VERSION,
    ResultsFormatError,
    RunRecord,
    Summary,
    load_results,
)

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_FILE = ROOT / "docs" / "results.schema.json"
DATA = synthetic_dataset()


@pytest.fixture(scope="module")
def results_path(tmp_path_factory) -> Path:
    """A real results.json: two seeds of a tiny run with a validation split."""
    out = tmp_path_factory.mktemp("run")
    main("synthetic", "synthetic", "synthetic benchmark", TINY,
         argv=["--epochs", "1", "--quiet", "--seeds", "0-1", "--validation", "2",
               "--out", str(out)], load=lambda data_dir, quiet: DATA)
    return out / "results.json"


def test_the_schema_file_is_the_modules_schema():
    assert json.loads(SCHEMA_FILE.read_text()) == JSON_SCHEMA
    jsonschema.Draft202012Validator.check_schema(JSON_SCHEMA)


def test_the_typed_definition_and_the_schema_name_the_same_fields():
    for typed, schema in ((RunRecord, JSON_SCHEMA["properties"]["runs"]["items"]),
                          (Summary, JSON_SCHEMA["properties"]["summary"])):
        assert set(typed.__required_keys__) == set(schema["required"])
        assert set(typed.__annotations__) == set(schema["properties"])


def test_a_real_results_json_validates_and_loads(results_path):
    payload = json.loads(results_path.read_text())
    assert payload["schema_version"] == SCHEMA_VERSION
    jsonschema.validate(payload, json.loads(SCHEMA_FILE.read_text()))
    loaded = load_results(results_path)
    assert [r["seed"] for r in loaded["runs"]] == [0, 1]
    assert set(loaded["runs"][0]) <= set(RunRecord.__annotations__)
    assert "validation" in loaded["runs"][0] and "validation" in loaded["summary"]


def test_the_schema_rejects_what_is_wrong(results_path):
    payload = json.loads(results_path.read_text())
    del payload["runs"][0]["acc_matrix"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(payload, JSON_SCHEMA)
    with pytest.raises(ResultsFormatError, match="run 1 has no valid 'acc_matrix'"):
        results_schema.check_results(payload)
    payload = json.loads(results_path.read_text())
    payload["runs"][1]["final_avg_acc"] = 1.5  # not a fraction
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(payload, JSON_SCHEMA)


def _old_format(results_path: Path, where: Path) -> Path:
    payload = json.loads(results_path.read_text())
    del payload["schema_version"]
    where.mkdir(parents=True, exist_ok=True)
    (where / "results.json").write_text(json.dumps(payload))
    return where / "results.json"


def test_an_old_file_is_refused_by_every_reader_with_the_upgrade_command(
    results_path, tmp_path, capsys
):
    old = _old_format(results_path, tmp_path / "old")
    with pytest.raises(ResultsFormatError, match=r"before results\.json had a schema_version"):
        load_results(old)
    with pytest.raises(FiguresError, match="--upgrade"):
        read_results(old.parent)
    command = f"python -m spacenet_jax.storage.results_schema --upgrade {old}"
    with pytest.raises(ResultsFileError) as err:
        read_finished_runs(old, TINY, "synthetic")
    assert command in str(err.value)
    with pytest.raises(SystemExit) as exited:  # the command line: status 2, the same message
        main("synthetic", "synthetic", "d", TINY,
             ["--epochs", "1", "--quiet", "--out", str(old.parent), "--resume"],
             load=lambda data_dir, quiet: pytest.fail("data loaded before the refusal"))
    assert exited.value.code == 2
    assert command in capsys.readouterr().err
    # the command it names makes the file readable, with its runs unchanged
    assert results_schema.main(["--upgrade", str(old)]) == 0
    assert load_results(old)["runs"] == load_results(results_path)["runs"]
    assert results_schema.upgrade_results(old) is False  # already current


def test_another_version_or_not_a_results_json_is_refused(results_path, tmp_path):
    payload = json.loads(results_path.read_text())
    payload["schema_version"] = SCHEMA_VERSION + 1
    (tmp_path / "results.json").write_text(json.dumps(payload))
    with pytest.raises(ResultsFormatError, match="reads version"):
        load_results(tmp_path / "results.json")
    (tmp_path / "results.json").write_text('{"epochs": []}')
    with pytest.raises(ResultsFormatError, match="no list of runs"):
        load_results(tmp_path / "results.json")
    assert results_schema.main([str(tmp_path / "results.json")]) == 2


def test_no_reader_parses_results_json_by_hand():
    """Every reader of results.json goes through load_results: no ``json.load...["runs"]``."""
    by_hand = re.compile(r"json\.loads?\(.*\)\s*\[\s*\\?[\"']runs")
    sources = [*ROOT.glob("spacenet_jax/**/*.py"), *ROOT.glob("experiments/**/*.py"),
               *ROOT.glob("benchmarks/**/*.py"), *ROOT.glob("notebooks/*.ipynb")]
    offenders = [f"{p.relative_to(ROOT)}:{i}" for p in sources
                 for i, line in enumerate(p.read_text().splitlines(), 1) if by_hand.search(line)]
    assert not offenders, offenders
