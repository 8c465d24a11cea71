"""The experiments' command line on the tiny synthetic benchmark, for tests that need a real
process (to kill it): ``python tests/synthetic_cli.py [experiment flags]``."""

from __future__ import annotations

import sys

from conftest import TINY, synthetic_dataset

from experiments.common import main

if __name__ == "__main__":
    data = synthetic_dataset()
    main("synthetic", "synthetic", "synthetic benchmark", TINY, argv=sys.argv[1:],
         load=lambda data_dir, quiet: data)
