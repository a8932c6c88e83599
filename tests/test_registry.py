"""The one registry type behind the five name -> object tables: duplicate names are refused, and an
unknown name fails with the closest known one and the list, in the table's own error type."""
import pytest

from wsss.cam.extract import CAM_METHODS, ExtractCamConfig, extract_cams
from wsss.config import ConfigError
from wsss.data import DATASETS, DataConfig, build_dataset
from wsss.io import WsssDataError
from wsss.models import BACKBONES, build_backbone
from wsss.pipeline import STAGES
from wsss.registry import Registry
from wsss.seg.heads import HEADS
from wsss.seg.model import build_segmenter


def test_registry_is_a_dict_that_refuses_duplicates_and_suggests():
    reg = Registry("colour", error=KeyError, sort_known=False)

    @reg.register("red")
    def red():
        return "r"

    reg.add("blue", "b")
    assert dict(reg) == {"red": red, "blue": "b"} and list(reg) == ["red", "blue"]
    assert reg.lookup("blue") == "b"
    with pytest.raises(ValueError, match="colour 'red' is already registered"):
        reg.add("red", 1)
    assert reg["red"] is red  # the refused add left the entry alone
    with pytest.raises(KeyError) as e:
        reg.lookup("rde")
    assert e.value.args[0] == "unknown colour 'rde'. Did you mean 'red'? Known colours: red, blue"
    # nothing close: no suggestion; sort_known lists them sorted
    assert Registry("x", items=[("b", 1), ("a", 2)]).unknown_message("zzz") == "unknown x 'zzz'. Known xs: a, b"


@pytest.mark.parametrize("table, taken", [(BACKBONES, "resnet50"), (HEADS, "pcaa"), (CAM_METHODS, "adcam"),
                                          (DATASETS, "voc"), (STAGES, "train_cls")])
def test_every_table_refuses_a_second_entry_under_a_taken_name(table, taken):
    before = table[taken]
    with pytest.raises(ValueError, match="already registered"):
        table.add(taken, object())
    assert table[taken] is before


def test_every_table_suggests_the_closest_name(tmp_path):
    with pytest.raises(ValueError, match=r"unknown backbone 'resnet5'\. Did you mean 'resnet50'\?"):
        build_backbone("resnet5")
    with pytest.raises(ValueError, match=r"unknown head 'pcca'\. Did you mean 'pcaa'\?"):
        build_segmenter("pcca", "resnet_tiny", 3)
    with pytest.raises(ConfigError, match=r"unknown CAM method 'adcma'\. Did you mean 'adcam'\?.*Known CAM methods: cam, "):
        extract_cams(ExtractCamConfig(method="adcma", out=str(tmp_path / "cams")))
    with pytest.raises(WsssDataError, match=r"unknown dataset kind 'coc'\. Did you mean 'coco'\?"):
        build_dataset(DataConfig(kind="coc", root=str(tmp_path)))
    assert STAGES.unknown_message("predcit").startswith("unknown stage 'predcit'. Did you mean 'predict'?")
