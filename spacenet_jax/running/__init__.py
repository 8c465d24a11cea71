"""Running the algorithm: a task sequence, many seeds, what is measured.

* ``runner``        -- one seed's (or a vmapped batch of seeds') whole task sequence, and its
  record (accuracy matrices, forgetting, capacity, timings);
* ``multiseed``     -- many seeds as one program: the seed as a vmapped axis, sharded;
* ``study``         -- a study: many seeds of one configuration, in batches, checkpointed,
  resumed, written to ``results.json`` (what the experiments' command line calls);
* ``evaluation``    -- test accuracy per task (class- and task-incremental), in chunks;
* ``metrics``       -- forgetting, backward transfer, summaries over seeds;
* ``capacity``      -- the capacity plan of a task sequence, from the configuration alone;
* ``compile_cache`` -- JAX's persistent compilation cache, turned on for the experiments.
"""
