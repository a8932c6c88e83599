"""Moved to :mod:`wsss.eval.metrics`; this name is the same module (kept for code that imports it)."""
import sys

import wsss.eval.metrics as _moved

sys.modules[__name__] = _moved
