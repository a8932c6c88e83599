import torch

from wsss.cls.models import build_classifier
from wsss.models.conformer import conformer_s16


def test_s16_loads_an_official_layout_checkpoint(tmp_path):
    """A flat 1000-class state dict in the official naming (as Conformer_small_patch16.pth is
    laid out) loads into a 20-class classifier: every backbone tensor copied, heads dropped."""
    torch.manual_seed(0)
    official = conformer_s16(num_classes=1000).state_dict()
    assert len(official) == 718
    path = tmp_path / "Conformer_small_patch16.pth"
    torch.save(official, path)
    clf = build_classifier("conformer_s16", 20, pretrained=str(path), drop_last_block=False)
    mine = clf.net.state_dict()
    for k, v in mine.items():
        if "cls_head" in k:
            assert v.shape[0] == 20
        else:
            torch.testing.assert_close(v, official[k], rtol=0, atol=0, msg=k)
    # the AD-CAM variant without conv_trans_12 takes the same file strictly: those keys are expected to be unused
    clf16 = build_classifier("conformer_s16", 20, pretrained=str(path), drop_last_block=True)
    torch.testing.assert_close(clf16.net.conv1.weight, official["conv1.weight"], rtol=0, atol=0)
