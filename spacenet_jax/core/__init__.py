"""The algorithm: what a task does to the state pytree, and prediction. Pure and jittable.

Read in the order of the paper:

* ``config``       -- the hyper-parameters (one frozen dataclass), the methods, their checks;
* ``state``        -- the state pytree: weights, masks (connection owners), Omega, neuron owners;
* ``layers``       -- the 3x3 convolution (a custom gradient for the CPU), the 2x2 max-pool, and
  the dense layer split into a frozen rest and a trainable block;
* ``normalisation`` -- pixels to inputs: the dataset's mean and sd, or each pixel's own;
* ``network``      -- the forward pass, and prediction without task identity;
* ``topk``         -- the top k of a score array as a mask (allocation, rewiring, reservation);
* ``allocation``   -- Algorithm 2: select neurons, allocate a task's sparse connections;
* ``training``     -- Eq. 1-3: the masked train step and the compiled epoch;
* ``subnetwork``   -- the current task's blocks at static shapes: the sparse training step;
* ``importance``   -- Eq. 4: neuron importance from connection importance;
* ``rewiring``     -- Algorithm 3 / Eq. 5: drop and grow;
* ``reservation``  -- Algorithm 4: reserve each task's most important neurons;
* ``output_layer`` -- store a finished task's output columns, restore them for prediction;
* ``task_scores``  -- per-task inference on one scale: statistics of each task's own data;
* ``stages``       -- what each training stage sees (rehearsal's replay, joint's pooling);
* ``continual``    -- Algorithm 1: begin, learn and end a task;
* ``inputs``       -- checks of the images and labels a task is given;
* ``compiler``     -- the XLA:CPU flag that keeps convolutions fast, set on import.

Nothing here reads files, plots or imports TensorFlow (``tests/test_layering.py``).
"""
