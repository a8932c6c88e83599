"""`wsss visualize`: the grid's boundary and mask tiles show what the files hold."""
import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from wsss.cli import main
from wsss.data import VOCDataset
from wsss.io import WsssDataError, read_image, write_gray, write_mask
from wsss.viz import boundary_image


def test_boundary_image_upsamples_a_stride4_map_and_refuses_other_sizes(tmp_path):
    b = np.zeros((5, 7), np.uint8)
    b[:, 3] = 255  # a vertical boundary at stride-4 column 3 (pixels 12..15)
    write_gray(tmp_path / "b.png", b)
    full = boundary_image(tmp_path / "b.png", (18, 27))  # ceil(18/4) = 5, ceil(27/4) = 7
    assert full.shape == (18, 27)
    np.testing.assert_array_equal(full, cv2.resize(b, (28, 20), interpolation=cv2.INTER_LINEAR)[:18, :27])
    assert full[:, 12:16].min() >= 159 and full[:, :10].max() == 0 and full[:, 18:].max() == 0
    np.testing.assert_array_equal(boundary_image(tmp_path / "b.png", (5, 7)), b)  # already full size
    with pytest.raises(WsssDataError, match="stride 4"):
        boundary_image(tmp_path / "b.png", (40, 40))


def test_visualize_shows_boundary_ir_label_and_mask_tiles(toy_root, tmp_path):
    ds = VOCDataset(toy_root, "val")
    ids = ds.ids[:2]
    for i in ids:
        h, w = read_image(ds.image_path(i)).shape[:2]
        b = np.zeros((-(-h // 4), -(-w // 4)), np.uint8)
        b[:, : b.shape[1] // 2] = 255  # left half boundary
        write_gray(tmp_path / "boundary" / f"{i}.png", b)
        ir = np.full((h, w), 255, np.uint8)  # all unknown
        write_mask(tmp_path / "ir" / f"{i}.png", ir)
    out = tmp_path / "grid.png"
    r = CliRunner().invoke(main, ["visualize", "--data-root", str(toy_root), "--split", "val", "--ids", ",".join(ids),
                                  "--boundary", f"irn={tmp_path / 'boundary'}", "--mask", f"ir={tmp_path / 'ir'}",
                                  "--out", str(out)])
    assert r.exit_code == 0, r.output
    grid = read_image(out)
    assert grid.shape[:2] == (2 * 160, 4 * 160)  # image | boundary | ir | ground truth
    tile = grid[40:160, 160:320]  # first row's boundary tile, under its caption
    assert tile[:, 10:70].min() == 255 and tile[:, 90:150].max() == 0
    cream = grid[40:160, 330:470].reshape(-1, 3)
    assert (cream == [224, 224, 192]).all()  # 255 = unknown, in the VOC border colour
