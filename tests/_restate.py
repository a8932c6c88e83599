"""Slow, obviously-correct re-statements shared by several tests."""
import numpy as np


def normalise_pad_crop(image, label, rng, crop, label_fill=255):
    """IRN's normalise then ``random_crop`` written out: ImageNet-normalise the image, pad image
    (0) and label (``label_fill``) to at least ``crop`` at a random place, crop at a random place
    (draws: top, left, y0, x0). Returns the (3, crop, crop) image and the (crop, crop) label."""
    from wsss.cls.transforms import IMAGENET_MEAN, IMAGENET_STD

    hwc = (image.astype(np.float32) - IMAGENET_MEAN) / IMAGENET_STD
    h, w = hwc.shape[:2]
    ph, pw = max(crop, h), max(crop, w)
    top, left = int(rng.integers(0, ph - h + 1)), int(rng.integers(0, pw - w + 1))
    y0, x0 = int(rng.integers(0, ph - crop + 1)), int(rng.integers(0, pw - crop + 1))
    canvas = np.zeros((ph, pw, 3), np.float32)
    canvas[top : top + h, left : left + w] = hwc
    lcanvas = np.full((ph, pw), label_fill, np.uint8)
    lcanvas[top : top + h, left : left + w] = label
    return canvas[y0 : y0 + crop, x0 : x0 + crop].transpose(2, 0, 1), lcanvas[y0 : y0 + crop, x0 : x0 + crop]


def pil_resizer(resample):
    """IRN's ``imutils.pil_resize`` with one PIL kernel: ``resize(a, (h, w))``, the input itself
    when it already has that size."""
    from PIL import Image

    def resize(a, size):
        if size == a.shape[:2]:
            return a
        return np.asarray(Image.fromarray(a).resize(size[::-1], resample))

    return resize


def stop_at_step(monkeypatch, optimizer_cls, n):
    """Make the ``n``-th ``optimizer_cls.step`` call raise KeyboardInterrupt (a run killed there);
    returns the real ``step`` so the test can put it back."""
    real_step = optimizer_cls.step
    calls = {"n": 0}

    def flaky_step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(optimizer_cls, "step", flaky_step)
    return real_step


def as_recorded_before(out, key, step=1):
    """Make the finished training run in ``out`` look like one interrupted at ``step`` that was
    started before the setting ``key`` existed: no done.json, and ``key`` missing from the
    checkpoint's config and from config.yaml."""
    import yaml

    from wsss.engine import checkpoint as ckpt

    (out / "done.json").unlink()
    state = ckpt.load_resume(out / "resume.pt")
    del state["config"][key]
    state["step"] = step
    ckpt.save_resume(out / "resume.pt", state)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    del saved[key]
    (out / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
