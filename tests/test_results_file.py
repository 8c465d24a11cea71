"""results.json: merged with the runs it holds or refused, written safely, stamped with its
provenance; the training curves beside it; ``--version``."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from conftest import TINY, synthetic_dataset

from experiments.common import main
from spacenet_jax.running import study
from spacenet_jax.storage.results_io import provenance, write_json_atomic

DATA = synthetic_dataset()
ARGS = ["--epochs", "1", "--quiet"]


def run(out, *flags):
    return main("synthetic", "synthetic", "synthetic benchmark", TINY,
                argv=[*ARGS, "--out", str(out), *flags], load=lambda data_dir, quiet: DATA)


def seeds_in(out):
    return [r["seed"] for r in json.loads((out / "results.json").read_text())["runs"]]


def exit_code(fn, *args) -> int:
    with pytest.raises(SystemExit) as err:
        fn(*args)
    return err.value.code


def test_a_second_command_merges_its_seeds_into_results_json(tmp_path):
    run(tmp_path, "--seed", "3")
    run(tmp_path, "--seed", "4")  # issue 14, case 1: seed 3 used to be dropped
    assert seeds_in(tmp_path) == [3, 4]
    run(tmp_path, "--seeds", "2-5", "--resume")  # keeps 3 and 4, runs 2 and 5
    assert seeds_in(tmp_path) == [2, 3, 4, 5]
    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["summary"]["final_avg_acc"]["n"] == 4
    assert payload["summary"]["seeds"] == [2, 3, 4, 5]


def test_a_seed_already_there_or_another_configuration_is_refused(tmp_path, capsys):
    run(tmp_path, "--seed", "3")
    before = (tmp_path / "results.json").read_bytes()
    assert exit_code(run, tmp_path, "--seed", "3") == 2
    assert "already holds seed(s) 3 of this configuration; add --resume" in capsys.readouterr().err
    assert exit_code(run, tmp_path, "--seed", "4", "--lr", "0.07") == 2
    err = capsys.readouterr().err
    assert "holds runs of another configuration" in err and "learning_rate" in err
    assert (tmp_path / "results.json").read_bytes() == before


@pytest.mark.parametrize("content, problem", [
    ("{not json", "cannot read"),
    ('{"runs": {"seed": 1}}', "no list of runs"),
    ('{"runs": [{"seed": 1}]}', "run 1 has no valid 'benchmark'"),
    ('[1, 2]', "no list of runs"),
])
def test_a_broken_results_json_is_refused_with_status_2(tmp_path, capsys, content, problem):
    (tmp_path / "results.json").write_text(content)
    assert exit_code(run, tmp_path, "--seed", "0", "--resume") == 2
    err = capsys.readouterr().err
    assert problem in err and "move it away or choose another --out" in err
    assert "Traceback" not in err


def test_written_with_the_umask_fsynced_and_no_temporary_left(tmp_path, monkeypatch):
    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == 0o644
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    write_json_atomic(tmp_path / "r.json", {"a": 2})
    assert synced  # the data reach the disk before the rename

    class Unserializable:
        pass

    with pytest.raises(TypeError):
        write_json_atomic(tmp_path / "r.json", {"a": Unserializable()})
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 2}  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # no stale .tmp


def test_every_run_records_its_provenance(tmp_path):
    run(tmp_path, "--seed", "1")
    prov = json.loads((tmp_path / "results.json").read_text())["runs"][0]["provenance"]
    assert prov["spacenet_jax"] and prov["versions"]["jax"] and prov["versions"]["optax"]
    assert prov["backend"] == "cpu" and "cpu" in prov["devices"]
    assert "--seed 1" in prov["command"] and prov["date"].startswith("20")
    assert prov["git_commit"] is None or len(prov["git_commit"].split("+")[0]) == 40
    assert provenance()["command"]  # the process's own command line


def test_version_flag(capsys):
    assert exit_code(main, "synthetic", "synthetic", "d", TINY, ["--version"]) == 0
    assert capsys.readouterr().out.startswith("spacenet-jax ")


def test_training_curves_beside_results_and_in_tensorboard(tmp_path):
    run(tmp_path, "--seeds", "0-1", "--tensorboard", str(tmp_path / "tb"))
    rows = [json.loads(line) for line in (tmp_path / "epochs.jsonl").read_text().splitlines()]
    epochs = [r for r in rows if "epoch" in r]
    tasks = [r for r in rows if "test_acc" in r]
    assert len(epochs) == 2 * TINY.num_tasks * 1 and len(tasks) == 2 * TINY.num_tasks
    assert {r["task"] for r in rows} == {1, 2, 3}  # people count tasks from 1
    assert all(r["epoch"] == 1 and 0 <= r["train_acc"] <= 1 for r in epochs)
    final = json.loads((tmp_path / "results.json").read_text())["runs"]
    for seed in (0, 1):
        last = [r for r in tasks if r["seed"] == seed][-1]
        assert last["test_acc"] == final[seed]["acc_matrix"][-1]
        assert list((tmp_path / "tb" / f"seed_{seed}").glob("events.out.tfevents.*"))


def test_a_resumed_run_keeps_no_epoch_twice(tmp_path):
    out, ck = tmp_path / "out", tmp_path / "ck"
    from conftest import TINY as config  # noqa: F401 (same configuration as ``run``)

    def crash_after_first_task(*flags):
        real = study._save_each_task

        def wrapped(checkpointers, log):
            inner = real(checkpointers, log)

            def on_task_end(seed, task, state, record):
                inner(seed, task, state, record)
                if task == 0:
                    raise KeyboardInterrupt
            return on_task_end

        study._save_each_task = wrapped
        try:
            run(out, *flags)
        finally:
            study._save_each_task = real

    with pytest.raises((KeyboardInterrupt, SystemExit)):
        crash_after_first_task("--seed", "0", "--checkpoint-dir", str(ck))
    run(out, "--seed", "0", "--checkpoint-dir", str(ck), "--resume")
    rows = [json.loads(line) for line in (out / "epochs.jsonl").read_text().splitlines()]
    keys = [(r["task"], r.get("epoch")) for r in rows]
    assert keys == [(1, 1), (1, None), (2, 1), (2, None), (3, 1), (3, None)]


def test_an_output_folder_that_cannot_hold_results_is_refused_before_any_work(
        tmp_path, capsys, monkeypatch):
    trained = []
    monkeypatch.setattr(study, "run_task_sequences", lambda *a, **k: trained.append(1))
    (tmp_path / "a_file").write_text("x")
    assert exit_code(run, tmp_path / "a_file", "--seed", "0") == 2
    assert f"--out {tmp_path / 'a_file'} is a file, not a folder" in capsys.readouterr().err

    import tempfile as tf

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tf, "NamedTemporaryFile", no_space)
    assert exit_code(run, tmp_path / "full", "--seed", "0") == 2
    err = capsys.readouterr().err
    assert "cannot write in --out" in err and "No space left on device" in err
    assert not trained


def test_results_kept_elsewhere_when_the_final_write_fails(tmp_path, capsys, monkeypatch):
    real = study.write_json_atomic
    target = tmp_path / "out" / "results.json"

    def failing(path, payload):
        if path == target:
            raise OSError(28, "No space left on device")
        return real(path, payload)

    monkeypatch.setattr(study, "write_json_atomic", failing)
    run(tmp_path / "out", "--seed", "0")
    err = capsys.readouterr().err
    assert f"could not write {target}" in err and "the results are kept in " in err
    kept = Path(err.split("the results are kept in ")[1].split()[0])
    assert [r["seed"] for r in json.loads(kept.read_text())["runs"]] == [0]
    kept.unlink()
