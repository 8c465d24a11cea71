"""Looking at a run: the paper's figures, diagnostics, checkpoint inspection.

* ``figure_data`` -- the data behind the paper's figures (activations, connection maps,
  capacity), as pure functions of states;
* ``plots``       -- drawing them with matplotlib (PNG or PDF, each with its data as JSON);
* ``diagnostics`` -- why a task is or is not learned: per-task logit scales, drift of reserved
  units;
* ``inspect``     -- ``python -m spacenet_jax.analysis.inspect DIR``: what a checkpoint holds.
"""
