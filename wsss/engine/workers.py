"""Worker processes that end with their parent, however the parent ends.

A pool's workers outlive a parent killed with ``kill -9`` (nothing runs in the
parent to stop them): a trial left two 430 MB CRF workers running 23 minutes.
:func:`die_with_parent` is the pools' initializer: on Linux the kernel sends the
worker SIGKILL when its parent dies (``prctl(PR_SET_PDEATHSIG)``); everywhere, a
daemon thread also checks once a second that the parent is still the one that
started the worker, and exits if not.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time


def _watch(parent: int) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(1)


def die_with_parent() -> None:
    """Pool initializer: this worker stops when the process that started it dies."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
    threading.Thread(target=_watch, args=(parent,), daemon=True).start()


def init_render_worker() -> None:
    """Initializer of the image-rendering pools: one OpenCV thread (the workers are one per core)
    and :func:`die_with_parent`."""
    import cv2

    cv2.setNumThreads(1)
    die_with_parent()
