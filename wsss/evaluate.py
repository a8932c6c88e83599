"""Moved to :mod:`wsss.eval.masks`; this name is the same module (kept for code that imports it)."""
import sys

import wsss.eval.masks as _moved

sys.modules[__name__] = _moved
