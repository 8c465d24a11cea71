"""SpaceNet (Sokar, Mocanu, Pechenizkiy; Neurocomputing 2021) in JAX.

The same state pytree and pure functions serve MLPs and CNNs (a conv layer's unit of connection
is a whole kernel between two feature maps, Section 5.3). The package has four layers, each
importing only the ones before it:

* ``core``     -- the algorithm: configuration, state pytree, network, Algorithm 1-4 and
  Eq. 1-5 as jitted pure functions (no files, no plots, no TensorFlow);
* ``storage``  -- datasets (tfds, CIFAR binary files), orbax checkpoints, ``results.json``;
* ``running``  -- a whole task sequence for one seed or a vmapped batch of seeds, many seeds
  as a resumable study, evaluation and continual-learning metrics, the capacity plan;
* ``analysis`` -- the data behind the paper's figures, the plots, diagnostics, inspection.

Each sub-package's docstring lists its modules. The names below are the public API; they stay
importable from ``spacenet_jax`` whatever the layout.
"""

from spacenet_jax.core.compiler import configure_xla

configure_xla()  # before anything below can start a JAX backend

from spacenet_jax.core.allocation import allocate_connections, claim_all_connections, select_neurons
from spacenet_jax.core.config import INFERENCE, METHODS, ConfigError, SpaceNetConfig
from spacenet_jax.core.continual import (
    CapacityError,
    DivergenceError,
    TaskData,
    begin_task,
    end_task,
    learn_task,
    make_task_data,
    train_epoch_and_rewire,
)
from spacenet_jax.core.importance import neuron_importance
from spacenet_jax.core.inputs import InputError
from spacenet_jax.core.network import (
    forward,
    predict,
    predict_with_tasks,
    task_subnetwork_logits,
    task_subnetwork_weights,
)
from spacenet_jax.core.normalisation import fit_input_statistics, pixel_statistics, preprocess
from spacenet_jax.core.output_layer import inference_weights, store_output_weights
from spacenet_jax.core.reservation import reserve_neurons
from spacenet_jax.core.rewiring import drop_connections, grow_connections, rewire
from spacenet_jax.core.stages import training_stages
from spacenet_jax.core.state import FREE, SpaceNetState, init_state
from spacenet_jax.core.training import train_epoch, train_epoch_stepwise, train_step

__version__ = "0.1.0"

#: Public names of the outer layers, imported on first use (``import spacenet_jax`` stays free
#: of TensorFlow, orbax and matplotlib): name -> module.
_LAZY: dict[str, str] = {
    **dict.fromkeys(
        ("DatasetError", "ImageDataset", "hold_out_validation", "load_dataset", "task_indices"),
        "spacenet_jax.storage.data",
    ),
    **dict.fromkeys(
        ("CheckpointError", "TaskCheckpointer", "latest_task", "restore_task", "seed_dir"),
        "spacenet_jax.storage.checkpoint",
    ),
    **dict.fromkeys(("ResultsFormatError", "load_results"), "spacenet_jax.storage.results_schema"),
    **dict.fromkeys(("run_task_sequence", "run_task_sequences"), "spacenet_jax.running.runner"),
    **dict.fromkeys(("StudyError", "plan_study", "run_study"), "spacenet_jax.running.study"),
    "evaluate_tasks": "spacenet_jax.running.evaluation",
    "capacity_plan": "spacenet_jax.running.capacity",
}


def __getattr__(name: str):  # PEP 562: the outer layers' public names, on first use
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'spacenet_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "FREE",
    "INFERENCE",
    "METHODS",
    "CapacityError",
    "ConfigError",
    "DivergenceError",
    "InputError",
    "SpaceNetConfig",
    "SpaceNetState",
    "TaskData",
    "allocate_connections",
    "begin_task",
    "claim_all_connections",
    "drop_connections",
    "end_task",
    "fit_input_statistics",
    "forward",
    "grow_connections",
    "inference_weights",
    "init_state",
    "learn_task",
    "make_task_data",
    "neuron_importance",
    "pixel_statistics",
    "predict",
    "predict_with_tasks",
    "preprocess",
    "reserve_neurons",
    "rewire",
    "select_neurons",
    "store_output_weights",
    "task_subnetwork_logits",
    "task_subnetwork_weights",
    "train_epoch",
    "train_epoch_and_rewire",
    "train_epoch_stepwise",
    "train_step",
    "training_stages",
    *_LAZY,
]
