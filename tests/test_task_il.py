"""Task-incremental accuracy beside the class-incremental one: the argmax within a task's own
classes (``predict_with_tasks``), its accuracies, the records and their resumption."""

from __future__ import annotations

import dataclasses
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY, TINY_CNN, synthetic_dataset

from experiments.common import print_table
from experiments.figures import render_report
from spacenet_jax import init_state, learn_task, make_task_data
from spacenet_jax.core.network import forward, predict, predict_with_tasks, preprocess
from spacenet_jax.core.output_layer import inference_weights
from spacenet_jax.running import multiseed
from spacenet_jax.running.evaluation import (
    class_and_task_il_accuracies,
    evaluate_tasks,
    evaluate_tasks_both,
    predict_in_chunks,
    task_il_predictions,
)
from spacenet_jax.running.runner import run_task_sequence
from spacenet_jax.running.study import summarize_runs
from spacenet_jax.storage.data import task_indices

# ---- by hand ------------------------------------------------------------------------------

#: Two tasks, classes (0, 1) and (2, 3); three test examples each.
LABELS = np.array([0, 1, 0, 2, 3, 3])
INDEX = [np.array([0, 1, 2]), np.array([3, 4, 5])]
#: Per example: the class-IL prediction, the argmax within task 0's classes, within task 1's.
PREDICTIONS = np.array([
    [2, 0, 2],  # label 0: class-IL confuses it with task 1; within task 0 it is right
    [1, 1, 3],  # label 1: right both ways
    [3, 1, 3],  # label 0: wrong both ways
    [0, 0, 2],  # label 2: class-IL wrong, within task 1 right
    [3, 1, 3],  # label 3: right both ways
    [1, 1, 2],  # label 3: wrong both ways
])


def test_task_il_takes_each_example_from_its_own_tasks_column():
    np.testing.assert_array_equal(task_il_predictions(PREDICTIONS[:, 1:], INDEX),
                                  [0, 1, 1, 2, 3, 2])


def test_hand_made_class_and_task_il_accuracies():
    (class_il, class_pooled), (task_il, task_pooled) = class_and_task_il_accuracies(
        PREDICTIONS, LABELS, INDEX, learned=2
    )
    assert class_il == [1 / 3, 1 / 3] and class_pooled == 2 / 6
    assert task_il == [2 / 3, 2 / 3] and task_pooled == 4 / 6
    # After one task, task 1 is not scored and the pooled accuracy is task 0's.
    (class_il, class_pooled), (task_il, task_pooled) = class_and_task_il_accuracies(
        PREDICTIONS, LABELS, INDEX, learned=1
    )
    assert class_il == [1 / 3, None] and class_pooled == 1 / 3
    assert task_il == [2 / 3, None] and task_pooled == 2 / 3


# ---- the jitted prediction on real states -------------------------------------------------


def _numpy_predictions(state, config, images) -> tuple[np.ndarray, np.ndarray]:
    """Logits of ``network.forward`` with the stored output columns restored, then the
    class-IL and per-task argmaxes in numpy: ``((B,), (B, T))`` and the logits."""
    logits = np.asarray(forward(inference_weights(state), state.biases,
                                preprocess(jnp.asarray(images), config), config))
    masks = config.class_masks()
    seen = masks[: int(state.task)].any(axis=0)
    seen = seen if seen.any() else np.ones_like(seen)
    class_il = np.argmax(np.where(seen, logits, -np.inf), axis=-1)
    per_task = np.stack(
        [np.argmax(np.where(m, logits, -np.inf), axis=-1) for m in masks], axis=1
    )
    return np.concatenate([class_il[:, None], per_task], axis=1), logits


def _assert_agree(got: np.ndarray, want: np.ndarray, logits: np.ndarray) -> None:
    """Equal, except where two classes tie to float precision."""
    rows, cols = np.nonzero(got != want)
    for r, c in zip(rows, cols, strict=True):
        assert abs(logits[r, got[r, c]] - logits[r, want[r, c]]) < 1e-5, (r, c)
    assert len(rows) <= 1


def _states(config, data, tasks: int):
    """The initial state and the state after each of the first ``tasks`` tasks."""
    train = make_task_data(data.train_images, data.train_labels,
                           task_indices(data.train_labels, config.task_classes),
                           config.batch_size)
    states = [init_state(config, 0)]
    for task in train[:tasks]:
        states.append(jax.device_get(learn_task(states[-1], config, task)))
    return states


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_predict_with_tasks_matches_numpy_from_the_logits(name):
    if name == "mlp":
        config, data, tasks = TINY, synthetic_dataset(), 2
    else:
        config, data, tasks = (dataclasses.replace(TINY_CNN, epochs=1),
                               synthetic_dataset(dim=8 * 8 * 3), 1)
    images = data.test_images
    for state in _states(config, data, tasks):
        got = np.asarray(predict_with_tasks(state, config, jnp.asarray(images)))
        assert got.shape == (len(images), config.num_tasks + 1)
        want, logits = _numpy_predictions(state, config, images)
        _assert_agree(got, want, logits)
        # Column 0 is predict's, and each task column stays within that task's classes.
        np.testing.assert_array_equal(got[:, 0], np.asarray(predict(state, config, images)))
        for t, classes in enumerate(config.task_classes):
            assert set(np.unique(got[:, 1 + t])) <= set(classes)
        # In chunks (the last one padded), the same.
        np.testing.assert_array_equal(
            predict_in_chunks(state, config, images, chunk=47, with_tasks=True), got
        )


def test_evaluation_and_seed_batches_with_tasks():
    config, data = TINY, synthetic_dataset()
    states = _states(config, data, 2)[1:]
    index = task_indices(data.test_labels, config.task_classes)
    state = states[-1]
    class_il, task_il = evaluate_tasks_both(state, config, data.test_images, data.test_labels,
                                            index)
    assert class_il == evaluate_tasks(state, config, data.test_images, data.test_labels, index)
    assert task_il[0][2] is None and all(
        t >= c for t, c in zip(task_il[0][:2], class_il[0][:2], strict=True)
    )
    # Seeds as a vmapped axis: (S, N, T + 1), chunked along the example axis.
    batch = multiseed.stack_states(states)
    chunked = predict_in_chunks(
        batch, config, data.test_images, chunk=50, with_tasks=True,
        predict_fn=lambda s, images: multiseed.predict_seeds(s, config, images, None, True),
    )
    assert chunked.shape == (2, len(data.test_images), config.num_tasks + 1)
    for s, single in enumerate(states):
        np.testing.assert_array_equal(
            chunked[s], np.asarray(predict_with_tasks(single, config, data.test_images))
        )
    np.testing.assert_array_equal(  # without with_tasks: predict's (S, B), as before
        np.asarray(multiseed.predict_seeds(batch, config, data.test_images)), chunked[..., 0]
    )


# ---- records, resumption, summary, report -------------------------------------------------

CONFIG = dataclasses.replace(TINY, connections_per_task=(100, 36, 10), learning_rate=0.1,
                             epochs=2)


def test_resume_from_a_record_without_task_il_fills_none(capsys):
    """A record of an older version (no task-IL keys) resumes; its rows become None."""
    data = synthetic_dataset()
    saved = {}

    def keep(task, state, record):
        saved[task] = (jax.device_get(state), record)

    _, whole = run_task_sequence(CONFIG, data, 1, benchmark="synthetic", progress=False,
                                 on_task_end=keep)
    state, old = saved[0]
    old = {k: v for k, v in old.items() if "task_il" not in k}
    _, resumed = run_task_sequence(CONFIG, data, 1, benchmark="synthetic", progress=True,
                                   resume_from=(state, old))
    assert "task 3/3 done" in capsys.readouterr().err
    assert resumed["acc_matrix"] == whole["acc_matrix"]
    assert resumed["task_il_acc_matrix"] == [[None] * 3, *whole["task_il_acc_matrix"][1:]]
    assert resumed["final_task_il_acc"] == whole["final_task_il_acc"]
    assert resumed["final_task_il_avg_acc"] == whole["final_task_il_avg_acc"]
    # Resumed after the last task, the final task-IL accuracies are unknown: None.
    state, old = saved[2]
    old = {k: v for k, v in old.items() if "task_il" not in k}
    _, done = run_task_sequence(CONFIG, data, 1, benchmark="synthetic", progress=False,
                                resume_from=(state, old))
    assert done["task_il_acc_matrix"] == [[None] * 3] * 3
    assert done["final_task_il_acc"] == [None] * 3 and done["final_task_il_avg_acc"] is None
    # The summary, the table and the report take old and new records alike.
    summary = summarize_runs([whole, done])
    assert summary["final_task_il_avg_acc"] is None
    assert summarize_runs([whole])["final_task_il_avg_acc"]["mean"] == pytest.approx(
        whole["final_task_il_avg_acc"]
    )
    out = io.StringIO()
    print_table([whole], summarize_runs([whole]), file=out)
    assert "task-IL" in out.getvalue()
    assert f"task-incremental (argmax within each task's classes): " \
           f"{100 * whole['final_task_il_avg_acc']:.2f} %" in out.getvalue()
    print_table([whole, done], summary, file=io.StringIO())
    report = render_report({"runs": [whole]}, None, {}, {}, [], seed=1)
    row = " | ".join(f"{100 * a:.2f}" for a in whole["task_il_acc_matrix"][-1])
    assert "Task-incremental accuracy (%)" in report and f"| after task 3 | {row} |" in report
    assert "Task-incremental accuracy (%)" not in render_report(
        {"runs": [old]}, None, {}, {}, [], seed=1
    )
