from dataclasses import dataclass, field

import pytest

from wsss.config import ConfigError, from_dict, load_config, save_config
from wsss.data import DataConfig


@dataclass
class Stage:
    data: DataConfig = field(default_factory=DataConfig)
    lr: float = 0.1
    epochs: int = 5
    scales: tuple[float, ...] = (1.0, 0.5)
    crop: int | None = None
    amp: bool = False


def test_file_then_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("lr: 1\nepochs: 3\nscales: [1.0, 2.0]\ndata:\n  root: /x\n  split: val\n")
    cfg = load_config(Stage, p, {"epochs": 7, "crop": None, "data.split": "train"})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.epochs == 7 and cfg.crop is None
    assert cfg.scales == (1.0, 2.0)
    assert cfg.data.root == "/x" and cfg.data.split == "train"


def test_unknown_key_names_the_closest(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("epohcs: 3\n")
    with pytest.raises(ConfigError, match="epohcs.*Did you mean 'epochs'"):
        load_config(Stage, p)
    with pytest.raises(ConfigError, match="data.rot.*'root'"):
        from_dict(Stage, {"data": {"rot": "/x"}})


def test_wrong_types_are_refused():
    with pytest.raises(ConfigError, match="epochs: expected an integer"):
        from_dict(Stage, {"epochs": 2.5})
    with pytest.raises(ConfigError, match="amp: expected true or false"):
        from_dict(Stage, {"amp": "yes"})
    with pytest.raises(ConfigError, match="not found"):
        load_config(Stage, "/nonexistent.yaml")


def test_resolved_config_round_trips(tmp_path):
    cfg = from_dict(Stage, {"lr": 0.5, "data": {"root": "/d"}})
    save_config(cfg, tmp_path / "out" / "config.yaml")
    again = load_config(Stage, tmp_path / "out" / "config.yaml")
    assert again == cfg


def test_every_shipped_config_loads():
    from pathlib import Path

    from wsss.cls.train import TrainClsConfig
    from wsss.config import load_config, read_yaml
    from wsss.evaluate import EvalConfig
    from wsss.seg.predict import PredictConfig
    from wsss.seg.train import TrainSegConfig

    sections = {"train_cls": TrainClsConfig, "train_seg": TrainSegConfig, "predict": PredictConfig,
                "eval": EvalConfig}
    files = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert files
    for path in files:
        for section in read_yaml(path):
            load_config(sections[section], path, section=section)


def test_a_stage_reads_its_own_saved_config_and_refuses_a_file_without_its_section(tmp_path):
    from wsss.pseudo.make import MakePseudoConfig

    saved = MakePseudoConfig(cam_dir="runs/x", refine="crf", threshold=0.4)
    save_config(saved, tmp_path / "config.yaml")  # what make-pseudo leaves in its output folder
    back = load_config(MakePseudoConfig, tmp_path / "config.yaml", overrides={"threshold": 0.5},
                       section="make_pseudo")
    assert (back.cam_dir, back.refine, back.threshold) == ("runs/x", "crf", 0.5)
    (tmp_path / "recipe.yaml").write_text("train_cls:\n  epochs: 3\n")
    with pytest.raises(ConfigError, match="no 'make_pseudo' section"):
        load_config(MakePseudoConfig, tmp_path / "recipe.yaml", section="make_pseudo")
    (tmp_path / "both.yaml").write_text("make_pseudo:\n  threshold: 0.3\ntrain_cls:\n  epochs: 3\n")
    assert load_config(MakePseudoConfig, tmp_path / "both.yaml", section="make_pseudo").threshold == 0.3


def test_irn_presets_train_the_cam_net_with_irns_effective_momentum():
    """IRN's PolyOptimizer hands weight_decay (1e-4) to SGD's momentum slot: every IRN-recipe ResNet
    CAM net trains with momentum 1e-4."""
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    cfg = yaml.safe_load((root / "configs" / "voc_resnet50.yaml").read_text())["train_cls"]
    assert cfg["optimizer"] == "sgd" and cfg["momentum"] == 1e-4
    recipe = yaml.safe_load((root / "pipelines" / "voc_r50_cam_irn.yaml").read_text())
    cls_steps = [s["settings"] for s in recipe["steps"] if s["stage"] == "train_cls"]
    assert cls_steps and all(s["momentum"] == 1e-4 for s in cls_steps if s.get("optimizer") == "sgd")


def test_implied_settings_fill_in_nested_records(tmp_path):
    """A manifest recorded before a nested setting existed (make-pseudo's ``irn`` without
    ``resize``) compares as the implied value, and refuses any other."""
    import json

    from wsss.config import check_output_settings

    (tmp_path / "manifest.json").write_text(json.dumps({"refine": "irn", "irn": {"crop": 512}}))
    implied = {"irn": {"resize": "opencv"}}
    check_output_settings(tmp_path, {"refine": "irn", "irn": {"crop": 512, "resize": "opencv"}}, "masks",
                          implied=implied)
    with pytest.raises(ConfigError, match="other settings \\(irn\\)"):
        check_output_settings(tmp_path, {"refine": "irn", "irn": {"crop": 512, "resize": "pil"}}, "masks",
                              implied=implied)
    with pytest.raises(ConfigError, match="other settings \\(irn\\)"):  # without the implied value: a new key
        check_output_settings(tmp_path, {"refine": "irn", "irn": {"crop": 512, "resize": "opencv"}}, "masks")


def test_fixed_choices_are_refused_the_same_from_yaml_and_from_python(tmp_path):
    from wsss.cls.train import TrainClsConfig
    from wsss.config import check_choices
    from wsss.pseudo.make import MakePseudoConfig
    from wsss.pseudo.train_irn import TrainIrnConfig
    from wsss.seg.config import TrainSegConfig
    from wsss.seg.train import train_seg

    # from a file or option: refused while the file is read, naming the nested key
    (tmp_path / "bad.yaml").write_text("focal_reduction: avg\n")
    with pytest.raises(ConfigError, match="^focal_reduction must be 'sum' or 'mean', got 'avg'$"):
        load_config(TrainSegConfig, tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="^irn.resize must be 'pil' or 'opencv', got 'cubic'$"):
        load_config(MakePseudoConfig, None, {"irn.resize": "cubic"})
    with pytest.raises(ConfigError, match="^device must be one of auto, cpu, cuda, got 'gpu'$"):
        load_config(TrainClsConfig, None, {"device": "gpu"})
    # built in Python: the same message from check_choices, before the stage writes anything
    check_choices(TrainSegConfig())  # the defaults are valid choices
    with pytest.raises(ConfigError, match="^irn.device must be one of auto, cpu, cuda, got 'tpu'$"):
        check_choices(MakePseudoConfig(irn=TrainIrnConfig(device="tpu")))
    with pytest.raises(ConfigError, match="focal_reduction must be 'sum' or 'mean', got 'avg'"):
        train_seg(TrainSegConfig(focal_reduction="avg", out=str(tmp_path / "seg")), progress=False)
    assert not (tmp_path / "seg").exists()
