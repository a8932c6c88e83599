import numpy as np
import pytest
from PIL import Image

from wsss.io import (WsssDataError, atomic_path, read_image, read_mask, voc_palette, write_image, write_mask)


def test_voc_palette_known_entries():
    pal = voc_palette()
    assert pal[0].tolist() == [0, 0, 0]
    assert pal[1].tolist() == [128, 0, 0]
    assert pal[15].tolist() == [192, 128, 128]  # person
    assert pal[255].tolist() == [224, 224, 192]


def test_palette_mask_round_trip(tmp_path):
    mask = np.random.default_rng(0).integers(0, 21, size=(37, 53)).astype(np.uint8)
    mask[0, :] = 255
    path = write_mask(tmp_path / "m.png", mask)
    with Image.open(path) as im:
        assert im.mode == "P"
        assert im.getpalette()[3:6] == [128, 0, 0]
    np.testing.assert_array_equal(read_mask(path), mask)


def test_grayscale_mask_and_rgb_refused(tmp_path):
    Image.fromarray(np.full((4, 4), 3, np.uint8), mode="L").save(tmp_path / "g.png")
    assert read_mask(tmp_path / "g.png").max() == 3
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(WsssDataError, match="RGB"):
        read_mask(tmp_path / "rgb.png")


def test_corrupt_and_missing_files_are_named(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(WsssDataError, match="bad.jpg"):
        read_image(bad)
    with pytest.raises(WsssDataError, match="nope.png"):
        read_mask(tmp_path / "nope.png")


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.png"
    write_image(target, np.zeros((4, 4, 3), np.uint8))
    before = target.read_bytes()
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]
