"""The per-image stages' shared driver (engine.outputs.ImageOutputs) and their manifests
(engine.outputs.output_settings): the manifests are what each stage recorded before the settings
were declared once per config class (the old code is restated here), so existing folders resume."""
import json

import numpy as np
from pathlib import Path

import pytest

from wsss.cam.extract import ExtractCamConfig, _checkpoint_mtime
from wsss.config import ConfigError, to_dict
from wsss.data import DataConfig
from wsss.engine.outputs import ImageOutputs, output_settings
from wsss.pseudo.make import MakePseudoConfig
from wsss.pseudo.train_irn import TrainIrnConfig
from wsss.seg.predict import PredictConfig


def _old_extract_manifest(cfg, class_names):
    d = to_dict(cfg)
    d.pop("overwrite")
    d.pop("device")
    d.pop("batch_size")  # added later, declared RUN_ONLY: the manifests stay what they were
    weights = Path(cfg.cls_dir) / "model.safetensors"
    d["checkpoint_mtime"] = weights.stat().st_mtime if weights.is_file() else None
    return {**d, "class_names": list(class_names)}


def _old_predict_settings(cfg):
    # batch_size was added later, declared RUN_ONLY: the manifests stay what they were
    return {k: v for k, v in to_dict(cfg).items() if k not in ("device", "overwrite", "batch_size")}


def _old_make_pseudo_settings(cfg):
    # boundary_batch was added later, declared RUN_ONLY: the manifests stay what they were
    settings = {k: v for k, v in to_dict(cfg).items() if k not in ("workers", "overwrite", "device", "boundary_batch")}
    if cfg.refine != "irn":
        # amp (added later: the boundary net's inference precision) is irn's too; a manifest without it
        # reads as amp false (MASK_FORMAT_IMPLIED, test_make_pseudo_amp_...)
        for k in ("irn", "irn_dir", "beta", "exp_times", "radius", "save_scores", "irn_pad", "amp"):
            settings.pop(k)
    else:
        settings["irn"] = {k: v for k, v in settings["irn"].items() if k not in ("workers", "tensorboard")}
    return settings


def _same(a, b):
    """Equal and written the same (key order included): manifest.json byte for byte."""
    assert json.dumps(a, indent=2) == json.dumps(b, indent=2)


def test_each_stages_manifest_is_the_one_it_recorded_before(tmp_path):
    data = DataConfig(kind="voc", root=str(tmp_path / "voc"), split="val")
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "model.safetensors").write_bytes(b"x")
    names = ["background", "cat"]
    for cfg in (ExtractCamConfig(), ExtractCamConfig(data=data, cls_dir=str(tmp_path / "cls"), method="adcam",
                                                     device="cpu", overwrite=True, max_side=500, scales=(1.0, 2.0))):
        new = output_settings(cfg, checkpoint_mtime=_checkpoint_mtime(cfg), class_names=names)
        _same(new, _old_extract_manifest(cfg, names))
    for cfg in (PredictConfig(), PredictConfig(data=data, mode="slide", crf=True, device="cuda", overwrite=True)):
        _same(output_settings(cfg), _old_predict_settings(cfg))
    irn = TrainIrnConfig(backbone="resnet_tiny", workers=7, tensorboard=True, device="cpu", crop=64)
    for refine in ("none", "crf", "ir-label", "irn"):
        for cfg in (MakePseudoConfig(refine=refine),
                    MakePseudoConfig(data=data, refine=refine, irn=irn, workers=5, device="cpu", overwrite=True,
                                     irn_pad=0, save_scores=True, mask_format="index")):
            new = output_settings(cfg, () if cfg.refine == "irn" else cfg.IRN_ONLY)
            _same(new, _old_make_pseudo_settings(cfg))


def test_the_driver_checks_records_resumes_and_finishes(tmp_path, capsys):
    out = tmp_path / "out"
    settings = {"threshold": 0.25, "class_names": ["background", "cat"]}
    outputs = ImageOutputs(out, "masks", implied={"mask_format": "palette"})
    outputs.check(settings)  # nothing there yet
    assert not out.exists()
    outputs.open(settings, PredictConfig())
    assert json.loads((out / "manifest.json").read_text()) == settings and (out / "config.yaml").is_file()
    (out / "a.png").write_bytes(b"")
    seen = []
    assert outputs.run(["a", "b", "c"], ".png", "test", False, seen.append) == ["b", "c"]
    assert seen == ["b", "c"]
    assert "1 of 3 masks already in" in capsys.readouterr().out

    def loop(todo, track):
        seen.append(list(track(iter(todo), total=len(todo))))

    outputs.run(["a", "b"], ".png", "test", False, loop=loop, files="mask files")
    assert seen[-1] == ["b"] and "1 of 2 mask files already in" in capsys.readouterr().out
    outputs.finish({"images": 3})
    assert json.loads((out / "done.json").read_text()) == {"images": 3}
    with pytest.raises(ConfigError, match=r"holds masks made with other settings \(threshold\); pass --overwrite"):
        outputs.check({**settings, "threshold": 0.5})
    ImageOutputs(out, "masks", overwrite=True).check({**settings, "threshold": 0.5})
    outputs.check({**settings, "mask_format": "palette"})  # implied by a manifest without it


def test_batches_by_key_groups_each_item_once_and_never_mixes_keys():
    from wsss.engine.outputs import batches_by_key

    rng = np.random.default_rng(0)
    items = [(i, int(k)) for i, k in enumerate(rng.integers(0, 4, 50))]
    for size in (1, 3, 7, 100):
        groups = list(batches_by_key(iter(items), size, key=lambda it: it[1]))
        assert sorted(it for g in groups for it in g) == items
        assert all(0 < len(g) <= size and len({k for _, k in g}) == 1 for g in groups)
        # per key: full groups in the order the items came, then the remainder
        for key in range(4):
            mine = [it for it in items if it[1] == key]
            expected = [mine[i:i + size] for i in range(0, len(mine), size)]
            assert [g for g in groups if g[0][1] == key] == expected
