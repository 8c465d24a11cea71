"""Run by ``test_multiseed.py`` in a subprocess with 8 host CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``, which must be set before JAX starts).

Checks that seeds sharded over the devices give exactly the results of the same seeds on one
device, that the batch really is spread over the devices, and that the compiled programs hold no
cross-device communication. Prints one JSON line of what it measured; exits non-zero on failure.
"""

from __future__ import annotations

import json
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
from conftest import TINY, synthetic_dataset

from spacenet_jax import init_state
from spacenet_jax.core.continual import pad_stage_indices
from spacenet_jax.running import multiseed
from spacenet_jax.running.runner import run_task_sequences
from spacenet_jax.storage.data import task_indices

COLLECTIVES = r"all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter"


def same(a, b) -> bool:
    return all(
        np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def main() -> None:
    devices = jax.devices()
    assert len(devices) == 8, f"expected 8 host devices, got {devices}"
    data = synthetic_dataset()
    report: dict = {"devices": len(devices), "cases": []}

    # Results: sharded (all 8 devices; 5 seeds on 2 devices, padded to 6) equal one device.
    batched = (multiseed.begin_tasks, multiseed.train_epochs_and_rewire,
               multiseed.end_tasks, multiseed.predict_seeds)
    for seeds, pool in (([0, 1, 2, 3, 4, 5, 6, 7], devices), ([3, 4, 5, 6, 7], devices[:2])):
        for f in batched:
            f.clear_cache()
        sharded = run_task_sequences(TINY, data, seeds, progress=False, devices=pool)
        compiled = {f.__name__: f._cache_size() for f in batched}
        assert set(compiled.values()) == {1}, f"recompiled across tasks: {compiled}"
        alone = run_task_sequences(TINY, data, seeds, progress=False, devices=devices[:1])
        for seed, (sa, ra), (sb, rb) in zip(seeds, sharded, alone, strict=True):
            assert same(sa, sb), f"seed {seed}: sharded state differs from one device"
            assert ra["acc_matrix"] == rb["acc_matrix"], f"seed {seed}: accuracy differs"
        report["cases"].append(
            {"seeds": seeds, "devices_used": len(multiseed.seed_devices(len(seeds), pool)),
             "equal": True}
        )

    # The batch is spread over the devices, and the programs do not communicate.
    mesh = multiseed.seed_mesh(devices)
    states = multiseed.shard_seeds(
        multiseed.stack_states([init_state(TINY, s) for s in range(8)]), mesh
    )
    indices, counts = pad_stage_indices(
        task_indices(data.train_labels, TINY.task_classes), TINY.batch_size
    )
    images, labels = multiseed.replicate((data.train_images, data.train_labels), mesh)
    stage = multiseed.shard_seeds(np.stack([indices[0]] * 8), mesh)
    states, _ = multiseed.begin_tasks(states, TINY, mesh)
    epoch_args = (states, TINY, images, labels, stage, jnp.int32(counts[0]),
                  jnp.asarray(True), mesh)
    programs = {
        "begin_tasks": multiseed.begin_tasks.lower(states, TINY, mesh),
        "train_epochs_and_rewire": multiseed.train_epochs_and_rewire.lower(*epoch_args),
        "end_tasks": multiseed.end_tasks.lower(states, TINY, mesh),
        "predict_seeds": multiseed.predict_seeds.lower(
            states, TINY, multiseed.replicate(data.test_images, mesh), mesh
        ),
    }
    found = {
        name: sorted(set(re.findall(COLLECTIVES, lowered.compile().as_text())))
        for name, lowered in programs.items()
    }
    assert not any(found.values()), f"cross-device communication in {found}"
    out, metrics, _ = multiseed.train_epochs_and_rewire(*epoch_args)
    for leaf in (*out.weights, out.rng, metrics.loss):
        assert len(leaf.sharding.device_set) == 8, leaf.sharding
        assert leaf.addressable_shards[0].data.shape[0] == 1, "one seed per device expected"
    report["collectives"] = found
    report["output_devices"] = len(out.weights[0].sharding.device_set)
    print(json.dumps(report))


if __name__ == "__main__":
    sys.exit(main())
