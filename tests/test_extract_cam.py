import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from wsss.cam.extract import ExtractCamConfig, compute_cams, extract_cams, load_cam, save_cam
from wsss.cam.evaluate import EvalCamConfig, evaluate_cams
from wsss.cli import main
from wsss.cls.models import load_trained_classifier
from wsss.cls.train import TrainClsConfig, train_cls
from wsss.cls.transforms import normalize
from wsss.config import ConfigError
from wsss.data import DataConfig, VOCDataset
from wsss.io import read_mask


@pytest.fixture(scope="module")
def cls_dirs(toy_root, tmp_path_factory):
    """Two briefly trained classifiers (a few steps: the tests check the plumbing, not quality)."""
    dirs = {}
    for model in ("resnet_tiny", "conformer_tiny"):
        out = tmp_path_factory.mktemp(model)
        cfg = TrainClsConfig(data=DataConfig(kind="voc", root=str(toy_root)), val_split=None, model=model,
                             epochs=1, batch_size=8, crop=64, resize_long=(48, 80), workers=0, device="cpu",
                             out=str(out), max_steps=2, optimizer="sgd" if model == "resnet_tiny" else "adamw",
                             lr=0.01 if model == "resnet_tiny" else 5e-4)
        train_cls(cfg, progress=False)
        dirs[model] = out
    return dirs


def _reference_cam(model, image, label, scales):
    """Slow re-statement of IRN's protocol for vanilla CAM, one scale and one flip at a time."""
    h, w = image.shape[:2]
    keys = np.flatnonzero(label)
    strided = (math.ceil(h / 4), math.ceil(w / 4))
    up = (math.ceil(h / 16) * 16, math.ceil(w / 16) * 16)
    cam_sum = np.zeros((len(keys),) + strided)
    high_sum = np.zeros((len(keys),) + up)
    from PIL import Image

    for s in scales:
        # IRN's pil_rescale(img, s, order=3): PIL bicubic
        im = image if s == 1.0 else np.asarray(Image.fromarray(image).resize((round(w * s), round(h * s)), Image.BICUBIC))
        for flip in (False, True):
            x = torch.from_numpy(normalize(np.ascontiguousarray(im[:, ::-1] if flip else im)))[None]
            with torch.no_grad():
                m = F.relu(model.class_maps(x))[0, keys]
            if flip:
                m = m.flip(-1)
            cam_sum += F.interpolate(m[None], strided, mode="bilinear", align_corners=False)[0].numpy()
            high_sum += F.interpolate(m[None], up, mode="bilinear", align_corners=False)[0].numpy()
    high_sum = high_sum[:, :h, :w]
    cam_sum /= cam_sum.reshape(len(keys), -1).max(1)[:, None, None] + 1e-5
    high_sum /= high_sum.reshape(len(keys), -1).max(1)[:, None, None] + 1e-5
    return keys, cam_sum, high_sum


def test_driver_matches_per_scale_reference(cls_dirs):
    model, _ = load_trained_classifier(cls_dirs["resnet_tiny"])
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(45, 70, 3), dtype=np.uint8)  # odd size: padding and cropping
    label = np.zeros(8, np.float32)
    label[[1, 5]] = 1
    cfg = ExtractCamConfig(method="cam", scales=(1.0, 0.5, 1.5))
    got = compute_cams(model, image, label, cfg, torch.device("cpu"))
    keys, cam, high = _reference_cam(model, image, label, cfg.scales)
    np.testing.assert_array_equal(got["keys"], keys)
    assert got["cam"].shape == (2, 12, 18) and got["high_res"].shape == (2, 45, 70)
    np.testing.assert_allclose(got["cam"], cam, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["high_res"], high, rtol=1e-4, atol=1e-5)
    peaks = got["high_res"].reshape(2, -1).max(1)
    assert np.all(peaks <= 1.0) and np.all((peaks == 0) | (peaks > 0.99))  # max / (max + 1e-5)


def test_irn_npy_files_are_read(tmp_path):
    cam = torch.rand(2, 5, 6)
    high = np.random.rand(2, 17, 23).astype(np.float32)
    np.save(tmp_path / "2007_000032.npy", {"keys": np.array([3, 14]), "cam": cam, "high_res": high})
    got = load_cam(tmp_path, "2007_000032")
    np.testing.assert_array_equal(got["keys"], [3, 14])
    np.testing.assert_allclose(got["cam"], cam.numpy())
    save_cam(tmp_path / "x.npz", got)
    again = load_cam(tmp_path, "x")
    np.testing.assert_array_equal(again["high_res"], high)
    np.save(tmp_path / "bad.npy", {"keys": np.array([1]), "cam": np.zeros((2, 3, 3)), "high_res": np.zeros((2, 4, 4))})
    with pytest.raises(Exception, match="2 planes but 1 keys"):
        load_cam(tmp_path, "bad")


def test_irn_format_is_what_irn_writes_and_holds_the_same_cams(cls_dirs, toy_root, tmp_path):
    """--format irn: <id>.npy holding IRN make_cam's dict (cam a CPU torch tensor, as IRN's
    make_sem_seg_labels needs), the same values as the .npz files; later stages read either."""
    from wsss.pseudo.make import MakePseudoConfig, make_pseudo

    data = DataConfig(kind="voc", root=str(toy_root), split="val")
    base = dict(data=data, cls_dir=str(cls_dirs["resnet_tiny"]), method="cam", scales=(1.0,), device="cpu")
    npz = extract_cams(ExtractCamConfig(**base, out=str(tmp_path / "npz")), progress=False)
    irn = extract_cams(ExtractCamConfig(**base, file_format="irn", out=str(tmp_path / "irn")), progress=False)
    ids = VOCDataset(toy_root, "val").ids
    assert sorted(p.stem for p in irn.glob("*.npy")) == sorted(ids) and not list(irn.glob("*.npz"))
    for image_id in ids:
        d = np.load(irn / f"{image_id}.npy", allow_pickle=True).item()
        assert set(d) == {"keys", "cam", "high_res"}
        assert isinstance(d["cam"], torch.Tensor) and d["cam"].device.type == "cpu"
        assert isinstance(d["high_res"], np.ndarray) and d["keys"].dtype == np.int64
        want = load_cam(npz, image_id)
        np.testing.assert_array_equal(d["keys"], want["keys"])
        np.testing.assert_array_equal(d["cam"].numpy(), want["cam"])
        np.testing.assert_array_equal(d["high_res"], want["high_res"])
    masks = {}
    for name, folder in (("npz", npz), ("irn", irn)):
        masks[name] = make_pseudo(MakePseudoConfig(data=data, cam_dir=str(folder), refine="none", workers=1,
                                                   out=str(tmp_path / f"m_{name}")), progress=False)
    for image_id in ids:
        np.testing.assert_array_equal(read_mask(masks["npz"] / f"{image_id}.png"),
                                      read_mask(masks["irn"] / f"{image_id}.png"))
    # a rerun resumes on the .npy files; switching the format in the same folder is refused
    (irn / f"{ids[0]}.npy").unlink()
    extract_cams(ExtractCamConfig(**base, file_format="irn", out=str(irn)), progress=False)
    assert (irn / f"{ids[0]}.npy").is_file()
    with pytest.raises(ConfigError, match="other settings \\(file_format\\)"):
        extract_cams(ExtractCamConfig(**base, out=str(irn)), progress=False)
    # --overwrite in the other format replaces the files: none of the old format is left to be read
    extract_cams(ExtractCamConfig(**base, overwrite=True, out=str(irn)), progress=False)
    assert not list(irn.glob("*.npy")) and sorted(p.stem for p in irn.glob("*.npz")) == sorted(ids)
    # a folder written before the option existed (no file_format in its manifest) holds .npz files
    import json

    manifest = json.loads((npz / "manifest.json").read_text())
    del manifest["file_format"]
    (npz / "manifest.json").write_text(json.dumps(manifest))
    (npz / f"{ids[0]}.npz").unlink()
    extract_cams(ExtractCamConfig(**base, out=str(npz)), progress=False)
    assert (npz / f"{ids[0]}.npz").is_file()
    (npz / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="other settings \\(file_format\\)"):
        extract_cams(ExtractCamConfig(**base, file_format="irn", out=str(npz)), progress=False)


def test_extract_is_resumable_and_guards_settings(cls_dirs, toy_root, tmp_path):
    out = tmp_path / "cams"
    cfg = ExtractCamConfig(data=DataConfig(kind="voc", root=str(toy_root), split="val"), cls_dir=str(cls_dirs["resnet_tiny"]),
                           method="cam", scales=(1.0,), device="cpu", out=str(out))
    extract_cams(cfg, progress=False)
    files = sorted(out.glob("*.npz"))
    assert len(files) == 16 and (out / "done.json").is_file()
    # an interrupted run: remove a few outputs, rerun, only those are redone
    mtimes = {f.name: f.stat().st_mtime_ns for f in files}
    for f in files[:3]:
        f.unlink()
    extract_cams(cfg, progress=False)
    after = {f.name: f.stat().st_mtime_ns for f in sorted(out.glob("*.npz"))}
    assert len(after) == 16
    assert all(after[n] == mtimes[n] for n in list(mtimes)[3:])
    cfg.scales = (1.0, 0.5)
    with pytest.raises(ConfigError, match="other settings \\(scales\\)"):
        extract_cams(cfg, progress=False)
    res = evaluate_cams(EvalCamConfig(data=DataConfig(kind="voc", root=str(toy_root), split="val"), cam_dir=str(out)),
                        progress=False)
    assert 0 <= res.best.miou <= 1 and (out / "eval_cam.json").is_file() and (out / "eval_cam.png").is_file()
    fig = tmp_path / "grid.png"
    r = CliRunner().invoke(main, ["visualize", "--data-root", str(toy_root), "--split", "val", "--num", "3",
                                  "--cam", f"cam={out}", "--mask", f"gt={toy_root / 'SegmentationClass'}", "--out", str(fig)])
    assert r.exit_code == 0, r.output
    from PIL import Image

    with Image.open(fig) as im:
        assert im.size[1] == 3 * 160 and im.size[0] >= 4 * 160  # 3 rows: image, >= 1 heatmap, seed, gt...


def test_adcam_needs_a_conformer(cls_dirs, toy_root, tmp_path):
    cfg = ExtractCamConfig(data=DataConfig(kind="voc", root=str(toy_root), split="val"), cls_dir=str(cls_dirs["resnet_tiny"]),
                           method="adcam", scales=(1.0,), device="cpu", out=str(tmp_path / "a"))
    with pytest.raises(ConfigError, match="needs a Conformer"):
        extract_cams(cfg, progress=False)


@pytest.mark.parametrize("method", ["cam", "adcam", "attn-diffusion", "tscam"])
def test_conformer_methods_cli(cls_dirs, toy_root, tmp_path, method):
    out = tmp_path / method
    res = CliRunner().invoke(main, ["extract-cam", "--cls-dir", str(cls_dirs["conformer_tiny"]), "--method", method,
                                    "--data-root", str(toy_root), "--split", "val", "--scales", "1.0",
                                    "--device", "cpu", "--out", str(out)])
    assert res.exit_code == 0, res.output
    c = load_cam(out, "2001_000000")
    assert c["high_res"].shape[1:] == (64, 64) and c["high_res"].min() >= 0 and c["high_res"].max() <= 1
    res = CliRunner().invoke(main, ["eval-cam", "--cam-dir", str(out), "--data-root", str(toy_root), "--split", "val"])
    assert res.exit_code == 0, res.output
    assert "seed mIoU" in res.output


SHARD_SCRIPT = r"""
import sys
from wsss.cam.extract import ExtractCamConfig, extract_cams
from wsss.data import DataConfig, VOCDataset
from wsss.io import read_mask
root, cls_dir, out = sys.argv[1:4]
extract_cams(ExtractCamConfig(data=DataConfig(kind="voc", root=root, split="val"), cls_dir=cls_dir, method="adcam",
                              scales=(1.0, 0.5), device="cpu", out=out), progress=False)
"""


@pytest.mark.dist
def test_two_processes_share_the_images_and_write_what_one_writes(cls_dirs, toy_root, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "shard.py"
    script.write_text(SHARD_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    cls_dir = str(cls_dirs["conformer_tiny"])
    one = subprocess.run([sys.executable, str(script), str(toy_root), cls_dir, str(tmp_path / "one")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--standalone", str(script), str(toy_root), cls_dir, str(tmp_path / "two")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    files = sorted(p.name for p in (tmp_path / "one").glob("*.npz"))
    assert len(files) == 16 and files == sorted(p.name for p in (tmp_path / "two").glob("*.npz"))
    for name in files:
        a, b = np.load(tmp_path / "one" / name), np.load(tmp_path / "two" / name)
        np.testing.assert_array_equal(a["keys"], b["keys"])
        np.testing.assert_allclose(a["high_res"], b["high_res"], rtol=1e-5, atol=1e-6)


def test_an_image_too_large_for_memory_is_refused_with_the_max_side_that_fits(cls_dirs, toy_root, tmp_path, monkeypatch):
    import wsss.cam.extract as extract
    from wsss.cam.extract import estimate_peak_bytes
    from wsss.cls.models import load_trained_classifier

    model, _ = load_trained_classifier(cls_dirs["conformer_tiny"])
    # the estimate grows with the image, and the attention methods' N x N matrices dominate large ones
    small, large = (estimate_peak_bytes(model, "adcam", s, s, (1.0, 2.0), True) for s in (64, 512))
    assert large > 16 * small
    assert estimate_peak_bytes(model, "adcam", 512, 512, (1.0,), True) > estimate_peak_bytes(model, "cam", 512, 512, (1.0,), True)
    free = estimate_peak_bytes(model, "adcam", 40, 40, (1.0, 0.5), True)
    monkeypatch.setattr(extract, "available_bytes", lambda device: free)
    args = ["extract-cam", "--cls-dir", str(cls_dirs["conformer_tiny"]), "--method", "adcam", "--data-root", str(toy_root),
            "--split", "val", "--scales", "1.0,0.5", "--device", "cpu", "--out", str(tmp_path / "cams")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0 and "Traceback" not in result.output
    said = result.output.strip()
    assert "needs about" in said and "--max-side" in said and len(said.splitlines()) == 1
    side = int(said.split("--max-side ")[1].split()[0])
    assert side <= 40
    result = CliRunner().invoke(main, args + ["--max-side", str(side)])
    assert result.exit_code == 0, result.output
    ds = VOCDataset(toy_root, "val")
    cams = load_cam(tmp_path / "cams", ds.ids[0])
    assert cams["high_res"].shape[1:] == (64, 64) and cams["cam"].shape[1:] == (16, 16)
    # the same as extracting from the downscaled image and resizing the maps up by hand
    import cv2

    sample = ds.load(ds.ids[0], with_mask=False)
    cfg = ExtractCamConfig(method="adcam", scales=(1.0, 0.5), device="cpu")
    small = cv2.resize(sample.image, (side, side), interpolation=cv2.INTER_AREA)
    ref = torch.from_numpy(compute_cams(model, small, sample.label, cfg, torch.device("cpu"))["high_res"])
    ref = F.interpolate(ref[None], (64, 64), mode="bilinear", align_corners=False)[0]
    ref /= ref.flatten(1).max(1)[0][:, None, None] + 1e-5
    np.testing.assert_allclose(cams["high_res"], ref.numpy(), atol=1e-5)


def test_scales_are_made_with_irns_pil_bicubic():
    from PIL import Image

    from wsss.cam.extract import _resize

    image = np.random.default_rng(0).integers(0, 256, (75, 100, 3)).astype(np.uint8)
    for s in (0.5, 1.5, 2.0):
        size = (round(100 * s), round(75 * s))
        np.testing.assert_array_equal(_resize(image, s), np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC)))
    assert not np.array_equal(_resize(image, 0.5), _resize(image, 0.5, "opencv"))


def test_resize_opencv_option_is_the_previous_cubic():
    import cv2

    from wsss.cam.extract import _resize

    image = np.random.default_rng(0).integers(0, 256, (75, 100, 3)).astype(np.uint8)
    for s in (0.5, 1.5, 2.0, 0.33):
        size = (max(1, round(100 * s)), max(1, round(75 * s)))
        np.testing.assert_array_equal(_resize(image, s, "opencv"), cv2.resize(image, size, interpolation=cv2.INTER_CUBIC))
    assert _resize(image, 1.0, "opencv") is image and _resize(image, 1.0) is image


def test_eval_cam_reports_the_best_and_irns_fixed_threshold(toy_root, tmp_path):
    """The fixed-threshold figures equal thresholding the CAMs at 0.15 and scoring them directly."""
    import json

    from wsss.io import read_mask
    from wsss.metrics import ConfusionMatrix, cam_to_mask

    ds = VOCDataset(toy_root, "val")
    rng = np.random.default_rng(1)
    cams = tmp_path / "cams"
    for i in ds.ids:
        keys = np.flatnonzero(ds.label(i))
        save_cam(cams / f"{i}.npz", {"keys": keys, "cam": rng.random((len(keys), 16, 16)).astype(np.float32),
                                     "high_res": rng.random((len(keys), 64, 64)).astype(np.float32)})
    res = CliRunner().invoke(main, ["eval-cam", "--cam-dir", str(cams), "--data-root", str(toy_root), "--split", "val"])
    assert res.exit_code == 0, res.output
    assert "(the best: AD-CAM's and SEAM's protocol)" in res.output and "at background threshold 0.15 (fixed" in res.output
    cm = ConfusionMatrix(ds.num_classes)
    for i in ds.ids:
        c = load_cam(cams, i)
        cm.update(read_mask(ds.mask_path(i)), cam_to_mask(c["high_res"], c["keys"] + 1, 0.15))
    fixed = json.loads((cams / "eval_cam.json").read_text())["fixed"]
    assert fixed["threshold"] == 0.15 and abs(fixed["mIoU"] - 100 * cm.compute().miou) < 1e-9


@pytest.mark.parametrize("model,method", [("resnet_tiny", "cam"), ("conformer_tiny", "adcam")])
def test_batched_extraction_writes_the_maps_made_one_by_one(cls_dirs, toy_root, tmp_path, model, method, monkeypatch):
    """#16 item 3: --batch-size groups images of one size into a forward; every file equals the one
    written image by image (to 1e-5, same keys), images of other sizes included, and the setting is
    not part of the manifest (a batched run resumes an unbatched one)."""
    import json
    import shutil

    import cv2

    root = tmp_path / "toy"
    shutil.copytree(toy_root, root)
    val = (root / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    # three sizes: most images 64 x 64, three 48 x 64, two 80 x 56 (each its own bucket)
    for image_id, size in zip(val[:5], [(64, 48)] * 3 + [(56, 80)] * 2):
        path = root / "JPEGImages" / f"{image_id}.jpg"
        cv2.imwrite(str(path), cv2.resize(cv2.imread(str(path)), size))
    data = DataConfig(kind="voc", root=str(root), split="val")
    kw = dict(data=data, cls_dir=str(cls_dirs[model]), method=method, topk=8, scales=(1.0, 0.5), device="cpu")
    one, many = tmp_path / "one", tmp_path / "many"
    extract_cams(ExtractCamConfig(**kw, out=str(one)), progress=False)
    import wsss.cam.extract as extract

    batches, batch_of = [], extract.compute_cams_batch
    monkeypatch.setattr(extract, "compute_cams_batch",
                        lambda m, ims, *a: batches.append([im.shape[:2] for im in ims]) or batch_of(m, ims, *a))
    extract_cams(ExtractCamConfig(**kw, out=str(many), batch_size=4), progress=False)
    rest = len(val) - 5  # the 64 x 64 images: full batches of 4, then what is left
    assert sorted(len(b) for b in batches) == sorted([2, 3] + [4] * (rest // 4) + [rest % 4] * (rest % 4 > 0))
    assert all(len(set(b)) == 1 for b in batches)
    assert sorted(p.name for p in one.glob("*.npz")) == sorted(p.name for p in many.glob("*.npz"))
    assert len(list(many.glob("*.npz"))) == len(val)
    for image_id in val:
        a, b = load_cam(one, image_id), load_cam(many, image_id)
        assert np.array_equal(a["keys"], b["keys"])
        for key in ("cam", "high_res"):
            assert a[key].shape == b[key].shape
            np.testing.assert_allclose(b[key], a[key], atol=1e-5, rtol=0)
    assert load_cam(many, val[0])["high_res"].shape[1:] == (48, 64)
    manifests = [json.loads((d / "manifest.json").read_text()) for d in (one, many)]
    assert "batch_size" not in manifests[1] and {k: v for k, v in manifests[0].items() if k != "out"} == \
        {k: v for k, v in manifests[1].items() if k != "out"}
    # an interrupted batched run is finished by an unbatched one (and the other way round)
    for f in sorted(many.glob("*.npz"))[:4]:
        f.unlink()
    extract_cams(ExtractCamConfig(**kw, out=str(many)), progress=False)
    assert len(list(many.glob("*.npz"))) == len(val)


def test_an_image_without_classes_gets_empty_maps(cls_dirs):
    """An image whose label lists no class (COCO has some) gets a file with no keys and no maps; the
    negativity check used to call min() on the empty maps and stop the stage."""
    from wsss.cam.extract import compute_cams_batch

    model, _ = load_trained_classifier(cls_dirs["resnet_tiny"], torch.device("cpu"))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (40, 52, 3), dtype=np.uint8) for _ in range(2)]
    labels = [np.zeros(8, np.float32), np.eye(8, dtype=np.float32)[2]]
    cfg = ExtractCamConfig(method="cam", scales=(1.0, 0.5), device="cpu")
    empty, one = compute_cams_batch(model, images, labels, cfg, torch.device("cpu"))
    assert empty["keys"].shape == (0,) and empty["cam"].shape == (0, 10, 13) and empty["high_res"].shape == (0, 40, 52)
    assert one["keys"].tolist() == [2] and one["high_res"].shape == (1, 40, 52) and one["high_res"].max() > 0.99
    alone = compute_cams(model, images[1], labels[1], cfg, torch.device("cpu"))
    np.testing.assert_allclose(one["high_res"], alone["high_res"], atol=1e-5, rtol=0)
    from dataclasses import replace

    from wsss.cam.extract import extract_batch

    small = extract_batch(model, images, labels, replace(cfg, max_side=26), torch.device("cpu"))  # the downscaled path
    assert small[0]["high_res"].shape == (0, 40, 52) and small[1]["high_res"].shape == (1, 40, 52)



def test_amp_extraction_stays_near_float32_and_is_part_of_the_manifest(cls_dirs, toy_root, tmp_path):
    """#16 item 3: --amp runs the forwards under autocast (bfloat16 on this CPU; float16 on a GPU, where
    benchmarks/suite.py measures the deviation): the maps stay float32, near the fp32 ones, and not
    equal to them (the autocast ran). A folder made in one precision refuses to be resumed in the
    other; a manifest written before the option reads as fp32."""
    import json

    data = DataConfig(kind="voc", root=str(toy_root), split="val")
    kw = dict(data=data, cls_dir=str(cls_dirs["resnet_tiny"]), method="cam", scales=(1.0, 0.5), device="cpu")
    fp32, amp = tmp_path / "fp32", tmp_path / "amp"
    extract_cams(ExtractCamConfig(**kw, out=str(fp32)), progress=False)
    extract_cams(ExtractCamConfig(**kw, out=str(amp), amp=True), progress=False)
    ids = VOCDataset(toy_root, "val").ids
    worst = mean = 0.0
    for image_id in ids:
        a, b = load_cam(fp32, image_id), load_cam(amp, image_id)
        assert np.array_equal(a["keys"], b["keys"]) and b["high_res"].dtype == np.float32
        d = np.abs(a["high_res"] - b["high_res"])
        worst, mean = max(worst, float(d.max())), mean + float(d.mean()) / len(ids)
    assert 0 < worst < 0.1 and mean < 0.01, (worst, mean)
    assert json.loads((amp / "manifest.json").read_text())["amp"] is True
    with pytest.raises(ConfigError, match="amp"):
        extract_cams(ExtractCamConfig(**kw, out=str(amp)), progress=False)
    manifest = json.loads((fp32 / "manifest.json").read_text())
    del manifest["amp"]
    (fp32 / "manifest.json").write_text(json.dumps(manifest))
    extract_cams(ExtractCamConfig(**kw, out=str(fp32)), progress=False)  # resumes: nothing to do


@pytest.mark.parametrize("method", ["cam", "adcam"])
def test_amp_conformer_maps_stay_near_float32(method):
    """The same for the Conformer (builtin weights: a from-scratch net's class maps are near zero, and
    max-normalising them magnifies any rounding). k = 1000 keeps every token: a top-k choice near a
    tie can flip under any change of precision, a discrete change that no tolerance bounds."""
    from wsss.cam.extract import compute_cams_batch
    from wsss.cls.models import build_classifier

    torch.manual_seed(0)
    model = build_classifier("conformer_tiny", 20, pretrained="builtin:conformer_tiny").eval()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (64, 80, 3), dtype=np.uint8) for _ in range(3)]
    label = np.zeros(20, np.float32)
    label[[3, 11]] = 1
    cfg = ExtractCamConfig(method=method, scales=(1.0, 0.5), topk=1000)
    ref = compute_cams_batch(model, images, [label] * 3, cfg, torch.device("cpu"))
    cfg.amp = True
    got = compute_cams_batch(model, images, [label] * 3, cfg, torch.device("cpu"))
    d = [np.abs(a["high_res"] - b["high_res"]) for a, b in zip(ref, got)]
    assert all(b["high_res"].dtype == np.float32 for b in got)
    assert 0 < max(float(x.max()) for x in d) < 0.1 and np.mean([x.mean() for x in d]) < 0.01
