"""The run loop without the command line (``spacenet_jax.running.study``): the same results as
the CLI, resumed from checkpoints after a crash, and errors as exceptions, never an exit."""

from __future__ import annotations

import dataclasses
import json

import pytest
from conftest import TINY, synthetic_dataset

from experiments.common import main as experiment_main
from spacenet_jax.running import study
from spacenet_jax.running.study import StudyError, plan_study, run_study
from spacenet_jax.storage.checkpoint import CheckpointError, TaskCheckpointer, saved_tasks, seed_dir
from spacenet_jax.storage.results_io import ResultsFileError

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

BENCH = "synthetic"
CONFIG = dataclasses.replace(TINY, epochs=1)


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset()


def _comparable(runs: list[dict]) -> list[dict]:
    """Records without what legitimately differs between two runs (times, provenance)."""
    return [{k: v for k, v in json.loads(json.dumps(r)).items()
             if k not in ("seconds", "provenance")} for r in runs]


class _Crash(Exception):
    pass


def test_run_study_equals_the_command_line(tmp_path, data):
    from_python = run_study(CONFIG, data, [0, 1], benchmark=BENCH, out_dir=tmp_path / "py",
                            progress=False)
    from_cli = experiment_main(
        BENCH, BENCH, "d", TINY, ["--seeds", "0,1", "--epochs", "1", "--quiet",
                                  "--out", str(tmp_path / "cli")],
        load=lambda data_dir, quiet: data,
    )
    assert _comparable(from_python["runs"]) == _comparable(from_cli["runs"])
    on_disk = json.loads((tmp_path / "py" / "results.json").read_text())
    assert _comparable(on_disk["runs"]) == _comparable(from_python["runs"])
    assert from_python["summary"]["final_avg_acc"] == from_cli["summary"]["final_avg_acc"]


def test_run_study_resumes_a_crashed_study_from_its_checkpoints(tmp_path, data, monkeypatch):
    whole = run_study(CONFIG, data, [0, 1], benchmark=BENCH, progress=False)
    save = TaskCheckpointer.save

    def crash_on_task_2(self, state, record):
        if int(state.task) == 2:
            raise _Crash
        return save(self, state, record)

    monkeypatch.setattr(TaskCheckpointer, "save", crash_on_task_2)
    out, ck = tmp_path / "out", tmp_path / "ck"
    with pytest.raises(_Crash):
        run_study(CONFIG, data, [0, 1], benchmark=BENCH, out_dir=out, checkpoint_dir=ck,
                  progress=False)
    monkeypatch.setattr(TaskCheckpointer, "save", save)
    assert [saved_tasks(seed_dir(ck, s)) for s in (0, 1)] == [[1], [1]]

    plan = plan_study(CONFIG, [0, 1], benchmark=BENCH, results_path=out / "results.json",
                      checkpoint_dir=ck, resume=True)
    assert plan.finished == [] and plan.tasks_done([0, 1]) == {0: 1, 1: 1}
    resumed = run_study(CONFIG, data, [0, 1], benchmark=BENCH, out_dir=out, checkpoint_dir=ck,
                        resume=True, plan=plan, progress=False)
    assert _comparable(resumed["runs"]) == _comparable(whole["runs"])
    assert [saved_tasks(seed_dir(ck, s)) for s in (0, 1)] == [[1, 2, 3]] * 2


def test_what_is_refused_raises_instead_of_exiting(tmp_path, data):
    out = tmp_path / "out"
    run_study(CONFIG, data, [0], benchmark=BENCH, out_dir=out, progress=False)
    with pytest.raises(ResultsFileError, match="already"):  # seed 0 is done; no resume
        run_study(CONFIG, data, [0], benchmark=BENCH, out_dir=out, progress=False)
    other = dataclasses.replace(CONFIG, learning_rate=CONFIG.learning_rate * 2)
    with pytest.raises(ResultsFileError):  # another configuration's results
        run_study(other, data, [1], benchmark=BENCH, out_dir=out, resume=True, progress=False)
    kept = run_study(CONFIG, data, [0, 1], benchmark=BENCH, out_dir=out, resume=True,
                     progress=False)  # seed 0 kept, seed 1 run
    assert [r["seed"] for r in kept["runs"]] == [0, 1]

    ck = tmp_path / "ck"
    run_study(CONFIG, data, [2], benchmark=BENCH, checkpoint_dir=ck, progress=False)
    with pytest.raises(CheckpointError, match="--resume"):  # a fresh run would mix with them
        run_study(CONFIG, data, [2], benchmark=BENCH, checkpoint_dir=ck, progress=False)


def test_a_failure_during_a_batch_is_a_study_error_naming_the_seeds(tmp_path, data, monkeypatch):
    def diverge(*args, **kwargs):
        from spacenet_jax.core.continual import DivergenceError

        raise DivergenceError("loss is nan")

    monkeypatch.setattr(study, "run_task_sequences", diverge)
    with pytest.raises(StudyError, match=r"spacenet, seeds \[3, 4\]: loss is nan") as err:
        run_study(CONFIG, data, [3, 4], benchmark=BENCH, out_dir=tmp_path, progress=False)
    assert type(err.value.__cause__).__name__ == "DivergenceError"
