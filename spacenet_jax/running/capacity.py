"""Capacity planning: what every task of a sequence gets, computed from the config alone.

SpaceNet's capacity is spent predictably: task ``t`` selects ``sel_l`` of the neurons still free
in each hidden layer (Algorithm 2), places ``connections_per_task[l]`` connections between its
selected units, regrows ``k_l = round(r * count_l)`` of them after every epoch but the last
(Algorithm 3, needing ``count_l + k_l`` positions), and finally reserves ``spec_l`` neurons per
hidden layer (Algorithm 4). ``capacity_plan`` lays this out per task and layer before any
training (``--dry-run`` prints it); ``config.validate`` refuses the configurations whose plan
does not fit.

The connection positions are an upper bound: positions that earlier tasks own between the same
neurons are only known during the run (``CapacityError`` reports them there).
"""

from __future__ import annotations

from typing import Any

from spacenet_jax.core.config import (
    SpaceNetConfig,
    free_neurons_before,
    selected_count,
    task_connections,
)


def capacity_plan(config: SpaceNetConfig) -> dict[str, Any]:
    """The plan of ``config``'s task sequence, as plain JSON-able data.

    Returns:
      ``{"method", "sparse", "tasks": [...], "final": {...}}``. Each task holds ``classes``,
      ``hidden`` (per hidden layer: ``free_before``, ``selected``, ``reserved``,
      ``free_after``) and ``layers`` (per weight matrix: ``connections``, ``regrowth``,
      ``positions`` between the selected units, ``fits``). ``final`` holds, per hidden layer,
      the neurons reserved and the size, and per weight matrix the connections used and the
      positions, and the whole network's totals. Dense methods claim every connection.
      Tasks, hidden layers and weight matrices are numbered from 1, as everywhere people read
      them (the JSON ``capacity_plan.json`` included).
    """
    hidden_sizes = config.layer_sizes[1:-1]
    tasks = []
    for t, classes in enumerate(config.task_classes):
        hidden = []
        for h, n in enumerate(hidden_sizes):
            spec = config.specific_neurons[h] if config.sparse else 0
            free = free_neurons_before(config, h, t)
            hidden.append({
                "layer": h + 1,
                "free_before": free,
                "selected": selected_count(config, h, t) if config.sparse else n,
                "reserved": spec,
                "free_after": free - spec,
            })
        layers = []
        for layer in range(config.num_layers):
            count, regrow, positions = task_connections(config, layer, t)
            layers.append({
                "layer": layer + 1,
                "connections": count,
                "regrowth": regrow,
                "positions": positions,
                "fits": count + regrow <= positions,
            })
        tasks.append({"task": t + 1, "classes": list(classes), "hidden": hidden,
                      "layers": layers})

    stages = config.num_tasks if config.sparse else 1
    used = [
        min(config.positions(layer),
            stages * (config.connections_per_task[layer] if config.sparse
                      else config.positions(layer)))
        for layer in range(config.num_layers)
    ]
    total_positions = sum(config.positions(layer) for layer in range(config.num_layers))
    final = {
        "hidden": [
            {"layer": h + 1, "size": n,
             "reserved": config.num_tasks * config.specific_neurons[h] if config.sparse else 0}
            for h, n in enumerate(hidden_sizes)
        ],
        "layers": [
            {"layer": layer + 1, "used": used[layer], "positions": config.positions(layer)}
            for layer in range(config.num_layers)
        ],
        "connections_used": sum(used),
        "connection_positions": total_positions,
    }
    return {"method": config.method, "sparse": config.sparse, "tasks": tasks, "final": final}


def format_plan(plan: dict[str, Any]) -> str:
    """A plain-text table of ``capacity_plan``'s result."""
    unit = "connections" if plan["sparse"] else "connections (dense: all of them)"
    lines = [f"capacity plan ({plan['method']}): per task, hidden neurons and {unit}"]
    for task in plan["tasks"]:
        lines.append(f"task {task['task']} (classes {task['classes']})")
        for h in task["hidden"]:
            lines.append(
                f"  hidden {h['layer']}: {h['free_before']} free, selects {h['selected']}, "
                f"reserves {h['reserved']} -> {h['free_after']} free"
            )
        for layer in task["layers"]:
            regrow = f" (+{layer['regrowth']} regrown)" if layer["regrowth"] else ""
            status = "ok" if layer["fits"] else "DOES NOT FIT"
            lines.append(
                f"  weights {layer['layer']}: {layer['connections']}{regrow} of "
                f"{layer['positions']} positions between the selected units, {status}"
            )
    final = plan["final"]
    lines.append("after the last task")
    for h in final["hidden"]:
        pct = 100 * h["reserved"] / h["size"]
        lines.append(f"  hidden {h['layer']}: {h['reserved']} of {h['size']} neurons reserved "
                     f"({pct:.0f}%)")
    for layer in final["layers"]:
        pct = 100 * layer["used"] / layer["positions"]
        lines.append(f"  weights {layer['layer']}: {layer['used']} of {layer['positions']} "
                     f"positions used ({pct:.1f}%)")
    pct = 100 * final["connections_used"] / final["connection_positions"]
    lines.append(f"  network: {final['connections_used']} of {final['connection_positions']} "
                 f"connections used ({pct:.1f}%)")
    return "\n".join(lines)
