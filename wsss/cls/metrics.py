"""Moved to :mod:`wsss.eval.multilabel`; this name is the same module (kept for code that imports it)."""
import sys

import wsss.eval.multilabel as _moved

sys.modules[__name__] = _moved
