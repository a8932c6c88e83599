"""Moved to :mod:`wsss.eval.cams`; this name is the same module (kept for code that imports it)."""
import sys

import wsss.eval.cams as _moved

sys.modules[__name__] = _moved
