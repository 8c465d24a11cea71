"""SpaceNet (Sokar, Mocanu, Pechenizkiy; Neurocomputing 2021) in JAX.

The same state pytree and pure functions serve MLPs and CNNs (a conv layer's unit of connection
is a whole kernel between two feature maps, Section 5.3). The modules follow the algorithm:

* ``config``       -- the hyper-parameters (one frozen dataclass), the method (SpaceNet, its
  Static-SparseNN ablation, SpaceNet-Rehearsal, dense fine-tuning / joint bounds) and checks;
* ``state``        -- the state pytree: weights, masks (connection owners), Omega, neuron owners;
* ``allocation``   -- Algorithm 2: select neurons, allocate a task's sparse connections;
* ``training``     -- Eq. 1-3: the masked train step and the compiled epoch;
* ``importance``   -- Eq. 4: neuron importance from connection importance;
* ``rewiring``     -- Algorithm 3 / Eq. 5: drop and grow;
* ``reservation``  -- Algorithm 4: reserve each task's most important neurons;
* ``topk``         -- the top k of a score array as a mask (allocation, rewiring, reservation);
* ``output_layer`` -- store a finished task's output columns, restore them for prediction;
* ``task_scores``  -- per-task inference on one scale: statistics of each task's own data;
* ``stages``       -- what each training stage sees (rehearsal's replay, joint's pooling);
* ``continual``    -- Algorithm 1: begin, learn and end a task (an epoch and its rewiring as
  one compiled program);
* ``multiseed``    -- many seeds as one program: the seed as a vmapped axis, sharded over devices;
* ``capacity``     -- the capacity plan of a task sequence, from the config alone;
* ``layers``       -- the 3x3 convolution (a custom gradient for the CPU) and the 2x2 max-pool;
* ``compiler``     -- the XLA:CPU flag that keeps convolutions fast, set on import;
* ``network``, ``evaluation``, ``metrics`` -- prediction without task identity and CL metrics;
* ``analysis``     -- the data behind the paper's figures (activations, connection maps, capacity);
* ``data``, ``runner``, ``plots`` -- MNIST / Fashion-MNIST through tensorflow-datasets and
  CIFAR-10/100 from the publisher's binary files, a whole recorded run, and Figure 3;
* ``checkpoint``, ``inspect`` -- orbax checkpoints after every task, resume, and inspection;
* ``results_schema`` -- the ``results.json`` format: typed records, JSON Schema, the loader.
"""

from spacenet_jax.compiler import configure_xla

configure_xla()  # before anything below can start a JAX backend

from spacenet_jax.allocation import allocate_connections, claim_all_connections, select_neurons
from spacenet_jax.config import INFERENCE, METHODS, ConfigError, SpaceNetConfig
from spacenet_jax.continual import (
    CapacityError,
    DivergenceError,
    TaskData,
    begin_task,
    end_task,
    learn_task,
    make_task_data,
    train_epoch_and_rewire,
)
from spacenet_jax.importance import neuron_importance
from spacenet_jax.inputs import InputError
from spacenet_jax.network import (
    forward,
    predict,
    predict_with_tasks,
    task_subnetwork_logits,
    task_subnetwork_weights,
)
from spacenet_jax.output_layer import inference_weights, store_output_weights
from spacenet_jax.reservation import reserve_neurons
from spacenet_jax.rewiring import drop_connections, grow_connections, rewire
from spacenet_jax.stages import training_stages
from spacenet_jax.state import FREE, SpaceNetState, init_state
from spacenet_jax.training import train_epoch, train_epoch_stepwise, train_step

__version__ = "0.1.0"

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
    "forward",
    "grow_connections",
    "inference_weights",
    "init_state",
    "learn_task",
    "make_task_data",
    "neuron_importance",
    "predict",
    "predict_with_tasks",
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
]
