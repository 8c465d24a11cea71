"""Why each task of a run is (not) learned, from its task checkpoints.

    python -m experiments.diagnose CHECKPOINT_DIR [--seed S] [--data-dir D] [--out FILE]

For every task checkpoint of one seed (``CHECKPOINT_DIR/seed_<s>/<t>``, as written by
``--checkpoint-dir``), on the test set of the run's dataset:

* just after task t: its class-IL and task-IL accuracy, the mean largest logit of its own
  classes against that of the earlier tasks' restored output columns, and the fraction of its
  images that are right task-incrementally but taken by an earlier task's class;
* per hidden layer, how many units task t's own connections reach and how many it reserved;
* after the last task, for every task: class-IL and task-IL accuracy (forgetting of the head
  against forgetting of the features) and the drift of its reserved units' activations on its
  own test images since it was learned.

Prints tables and writes them as JSON (default ``CHECKPOINT_DIR/diagnosis.json``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from spacenet_jax.analysis import diagnostics
from spacenet_jax.running.metrics import percent
from spacenet_jax.storage.checkpoint import (
    config_from_dict,
    find_seed_dir,
    read_metadata,
    restore_task,
    saved_tasks,
)
from spacenet_jax.storage.data import load_dataset, task_indices


def diagnose(folder: Path, data_dir: str | None) -> dict[str, Any]:
    """The diagnosis of one seed's task checkpoints (see the module docstring)."""
    meta = read_metadata(folder)
    config = config_from_dict(meta["config"])
    seed = meta["seed"]
    dataset = load_dataset(meta["dataset"], data_dir, verbose=False)
    test_index = task_indices(dataset.test_labels, config.task_classes)
    steps = saved_tasks(folder)
    acts: dict[int, list[np.ndarray]] = {}
    just_after, states = [], {}
    for step in steps:
        state, _ = restore_task(folder, config, seed, step)
        states[step] = state
        units, logits = diagnostics.unit_activations(state, config, dataset.test_images)
        acts[step] = units
        rows = diagnostics.head_competition(
            logits, dataset.test_labels, test_index, config, step
        )
        row = dict(rows[step - 1], task=step)
        row["earlier_tasks_logit"] = row.pop("other_logit")  # the last task: others are earlier
        row["reachable"] = diagnostics.reachable_units(state, config, step - 1)
        just_after.append(row)
    last = steps[-1]
    final_state = states[last]
    _, final_logits = diagnostics.unit_activations(final_state, config, dataset.test_images)
    final_rows = diagnostics.head_competition(
        final_logits, dataset.test_labels, test_index, config, last
    )
    owners = [np.asarray(o) for o in final_state.neuron_owner]
    for t, row in enumerate(final_rows):
        index = np.asarray(test_index[t])
        row["task"] = t + 1
        row["reserved_unit_drift"] = [
            diagnostics.unit_drift(acts[t + 1][h][index], acts[last][h][index], owners[h] == t)
            for h in range(config.num_hidden)
        ]
    return {
        "seed": seed, "benchmark": meta["benchmark"], "config": meta["config"],
        "just_after": just_after, "after_last": final_rows,
    }


def print_report(d: dict[str, Any]) -> None:
    pct = percent
    print(f"{d['benchmark']} seed {d['seed']}: just after learning each task (accuracies in %)")
    print("  task  class-IL  task-IL  own logit  earlier logit  lost to earlier  "
          "units reached by the task's connections (reserved reached / reserved)")
    for r in d["just_after"]:
        reach = "  ".join(f"{x['reached']}/{x['units']} ({x['reserved_reached']}/{x['reserved']})"
                          for x in r["reachable"])
        print(f"  {r['task']:4d}  {pct(r['class_il']):>8}  {pct(r['task_il']):>7}  "
              f"{r['own_logit']:9.2f}  {r['earlier_tasks_logit']:13.2f}  "
              f"{pct(r['lost_to_other_tasks']):>15}  {reach}")
    print("after the last task")
    print("  task  class-IL  task-IL  lost to other tasks  drift of its reserved units per layer")
    for r in d["after_last"]:
        drift = " ".join(f"{x:.2f}" for x in r["reserved_unit_drift"])
        print(f"  {r['task']:4d}  {pct(r['class_il']):>8}  {pct(r['task_il']):>7}  "
              f"{pct(r['lost_to_other_tasks']):>19}  {drift}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint_dir", type=Path)
    p.add_argument("--seed", type=int, default=None, help="seed folder (default: the only one)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    folder = args.checkpoint_dir / f"seed_{args.seed}" if args.seed is not None else (
        find_seed_dir(args.checkpoint_dir))
    result = diagnose(folder, args.data_dir)
    print_report(result)
    out = args.out or args.checkpoint_dir / "diagnosis.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
