"""A worker process started by ``nova worker --processes N`` (or ``--reload``): ``python -m nova._runtime ARGS``."""

import sys

from nova._runtime.cli import run_child

sys.exit(run_child(sys.argv[1:]))
