"""``NOVA_FUZZ_SCALE`` multiplies Hypothesis example counts (``nox -s fuzz`` sets 20)."""

import os

FUZZ_SCALE = max(1, int(os.environ.get("NOVA_FUZZ_SCALE", "1")))
