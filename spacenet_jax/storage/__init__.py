"""What is read and written: datasets, checkpoints, results files.

* ``data``           -- MNIST / Fashion-MNIST through tensorflow-datasets, CIFAR-10/100 from the
  publisher's binary files, task splits and the validation hold-out;
* ``checkpoint``     -- orbax checkpoints of the state after every task, and their checks;
* ``results_schema`` -- the ``results.json`` format: typed records, JSON Schema, the loader;
* ``folder_lock``    -- one run per output or checkpoint folder.
"""
