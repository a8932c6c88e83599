"""CAM files: one per image, ``<id>.npz`` (wsss) or IRN's pickled ``<id>.npy``.

Reading and writing them needs neither the classifier nor the CAM methods, so every stage that
only reads CAMs (eval-cam, make-pseudo, visualize) imports this module, not :mod:`wsss.cam.extract`.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch

from wsss.io import WsssDataError, atomic_write

CAM_FILE_SUFFIX = {"npz": ".npz", "irn": ".npy"}

# np.load parses each array's header with ast.literal_eval, and on CPython 3.11 two threads doing
# that at once can fail with "SystemError: AST constructor recursion depth mismatch" (seen in CI:
# eval-cam's loader threads). Stages read CAM files from thread pools, so reads take this lock;
# the threads still overlap the reading with the caller's work on the previous file.
_NP_LOAD_LOCK = threading.Lock()


def save_cam(path: str | Path, cams: dict[str, np.ndarray]) -> Path:
    """Write one image's CAMs: ``.npz`` (pickle-free) or, for a ``.npy`` path, IRN's pickled dict
    with ``cam`` as a CPU torch tensor (IRN's ``make_sem_seg_labels`` calls ``.cuda()`` on it)."""
    if Path(path).suffix == ".npy":
        irn = {"keys": np.asarray(cams["keys"], np.int64), "cam": torch.from_numpy(np.asarray(cams["cam"])),
               "high_res": np.asarray(cams["high_res"])}
        return atomic_write(path, lambda tmp: np.save(tmp, irn, allow_pickle=True))
    return atomic_write(path, lambda tmp: np.savez(tmp, keys=cams["keys"], cam=cams["cam"], high_res=cams["high_res"]))


def load_cam(cam_dir: str | Path, image_id: str) -> dict[str, np.ndarray]:
    """Read ``<id>.npz`` (wsss; a make-pseudo score file gives its ``scores`` as ``high_res``) or
    ``<id>.npy`` (IRN's pickled dict; cam may be a torch tensor)."""
    cam_dir = Path(cam_dir)
    npz, npy = cam_dir / f"{image_id}.npz", cam_dir / f"{image_id}.npy"
    if npz.is_file():
        with _NP_LOAD_LOCK, np.load(npz, allow_pickle=False) as f:
            out = {k: f[k] for k in ("keys", "cam", "high_res") if k in f}
            if "high_res" not in out and "scores" in f:
                # make-pseudo --save-scores: the walk's normalised full-size scores, read as CAMs so
                # that eval-cam sweeps, and make-pseudo --refine none applies, another threshold
                out["high_res"] = f["scores"]
    elif npy.is_file():
        with _NP_LOAD_LOCK:
            obj = np.load(npy, allow_pickle=True)
        obj = obj.item() if obj.dtype == object and obj.shape == () else obj
        if not isinstance(obj, dict) or "keys" not in obj:
            raise WsssDataError(f"{npy} is not an IRN CAM file (a dict with 'keys', 'cam', 'high_res')")
        out = {k: (v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v)) for k, v in obj.items()}
    else:
        raise WsssDataError(f"no CAM file for '{image_id}' in {cam_dir} (expected {npz.name} or {npy.name})")
    out["keys"] = np.asarray(out["keys"], dtype=np.int64).reshape(-1)
    for k in ("cam", "high_res"):
        if k in out and out[k].shape[0] != out["keys"].shape[0]:
            raise WsssDataError(
                f"CAM file of '{image_id}': '{k}' has {out[k].shape[0]} planes but {out['keys'].shape[0]} keys"
            )
    return out
