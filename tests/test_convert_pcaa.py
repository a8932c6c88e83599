"""wsss convert-weights --from pcaa (issue #14 item 4): a state dict with the official PCAA code's key
layout and shapes (networks/caanet.py, saved from its DDP wrapper) becomes a run that predict loads
strictly, and the converted head computes what the official head computes with those tensors."""
import re

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from wsss.cli import main
from wsss.config import ConfigError
from wsss.data.scenes import CITYSCAPES_CLASSES
from wsss.seg.convert import convert_pcaa
from wsss.seg.model import build_segmenter, load_trained_segmenter

K, C, S = 19, 32, 4
STEM = {"conv1.0": "0", "conv1.1": "1", "conv1.3": "3", "conv1.4": "4", "conv1.6": "6", "bn1": "7"}


@pytest.fixture(scope="module")
def wsss_model():
    torch.manual_seed(0)
    model = build_segmenter("pcaa", "resnet50_v1c", K, channels=C, pool_sizes=(S,), contract_dilation=False)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a wrong BN mapping shows
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
    return model.eval()


def official_layout(model) -> dict[str, torch.Tensor]:
    """The official checkpoint's keys and shapes, written from caanet.py's module tree: a Sequential
    stem, head.conva / module_list / convb / conv_seg (classifier at index 3), dsn; 1x1 Conv2d over
    patches; conv_seg reads cat([convb output, backbone features]); every key under 'module.'."""
    state = {}
    for key, value in model.state_dict().items():
        m = re.match(r"backbone\.(conv1\.\d|bn1)\.(.+)", key)
        if m:
            key = f"backbone.stem.{STEM[m.group(1)]}.{m.group(2)}"
        key = key.replace("aux_head.convs.0.", "dsn.").replace("aux_head.cls.1.", "dsn.3.")
        key = key.replace("head.reduce.", "head.conva.").replace("head.post.", "head.convb.")
        key = key.replace("head.fuse.", "head.conv_seg.").replace("head.cls.1.", "head.conv_seg.3.")
        key = key.replace("head.pcaa.", "head.module_list.").replace(".cam.1.", ".conv_cam.")
        key = key.replace(".gcu_node.", ".gcn.conv1.").replace(".gcu_channel.", ".gcn.conv2.")
        key = key.replace(".global_fuse.", ".fuse.").replace(".query.", ".proj_query.")
        key = key.replace(".key.", ".proj_key.").replace(".value.", ".proj_value.").replace(".out.", ".conv_out.")
        if key.endswith(("gcn.conv1.weight", ".fuse.weight")) and "module_list" in key:
            value = value.unsqueeze(-1)
        if key == "head.conv_seg.0.weight":  # wsss: cat([backbone, post]); official: cat([convb, backbone])
            value = torch.cat([value[:, -C:], value[:, :-C]], dim=1)
        state["module." + key] = value.clone()
    return state


def _bn(x, sd, p):
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                        False, 0.0, 1e-5)


def _cbr(x, sd, p, padding=1):
    return F.relu(_bn(F.conv2d(x, sd[f"{p}.0.weight"], padding=padding), sd, f"{p}.1"))


def official_head(x, sd):
    """CAAHead.forward of caanet.py (eval mode, one CAAM with S x S bins), on the official tensors."""
    out = _cbr(x, sd, "head.conva")
    p = "head.module_list.0."
    cam = F.conv2d(out, sd[p + "conv_cam.weight"], sd[p + "conv_cam.bias"])
    score = torch.sigmoid(F.adaptive_avg_pool2d(cam, S))
    b, c, h, w = out.shape
    rh, rw = h // S, w // S

    def split(t):
        return t.view(b, t.shape[1], S, rh, S, rw).permute(0, 2, 4, 3, 5, 1).reshape(b, S * S, rh * rw, t.shape[1])

    cam_p, x_p = split(cam), split(out)
    confidence = score.view(b, K, -1).transpose(1, 2).unsqueeze(3)
    local = torch.softmax(cam_p, dim=2).transpose(2, 3) @ x_p * confidence
    local = F.relu(F.conv2d(local, sd[p + "gcn.conv1.weight"]) + local) @ sd[p + "gcn.conv2.weight"].t()
    glob = F.relu(F.conv2d(local, sd[p + "fuse.weight"], sd[p + "fuse.bias"])).repeat(1, S * S, 1, 1)
    q = F.linear(x_p, sd[p + "proj_query.weight"], sd[p + "proj_query.bias"])
    k = F.linear(local, sd[p + "proj_key.weight"], sd[p + "proj_key.bias"])
    v = F.linear(glob, sd[p + "proj_value.weight"], sd[p + "proj_value.bias"])
    att = torch.softmax(q @ k.transpose(2, 3), dim=-1) @ v
    att = att.view(b, S, S, rh, rw, -1).permute(0, 5, 1, 3, 2, 4).reshape(b, -1, h, w)
    out = out + _cbr(att, sd, p + "conv_out", padding=0)
    out = _cbr(out, sd, "head.convb")
    y = _cbr(torch.cat([out, x], dim=1), sd, "head.conv_seg")
    return F.conv2d(y, sd["head.conv_seg.3.weight"], sd["head.conv_seg.3.bias"])


@pytest.fixture(scope="module")
def official_ckpt(wsss_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("pcaa") / "CS_scenes_best.pth"
    torch.save(official_layout(wsss_model), path)
    return path


def test_converted_run_loads_strictly_and_matches_the_official_head(wsss_model, official_ckpt, tmp_path):
    sd = {k[len("module."):]: v for k, v in torch.load(official_ckpt, weights_only=True).items()}
    assert len(sd) == len(wsss_model.state_dict())
    out = convert_pcaa(official_ckpt, tmp_path / "run", class_names=CITYSCAPES_CLASSES, crop=768, base_size=1024)
    model, cfg = load_trained_segmenter(out)  # strict: refuses any missing or unexpected key
    assert (cfg.backbone, cfg.channels, cfg.pool_sizes, cfg.contract_dilation) == ("resnet50_v1c", C, (S,), False)
    assert (cfg.crop, cfg.base_size) == (768, 1024)
    mine = wsss_model.state_dict()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, mine[k], rtol=0, atol=0, msg=k)
    torch.manual_seed(1)
    x = torch.randn(2, 2048, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model.head(x)["logits"], official_head(x, sd), rtol=1e-4, atol=1e-5)
        image = torch.randn(1, 3, 64, 64)
        torch.testing.assert_close(model(image)["out"], wsss_model(image)["out"], rtol=0, atol=0)


def test_cli_converts_and_names_the_classes_from_the_class_count(official_ckpt, tmp_path):
    result = CliRunner().invoke(main, ["convert-weights", "--from", "pcaa", str(official_ckpt), "--out",
                                       str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cli" / "class_names.txt").read_text().split("\n") == list(CITYSCAPES_CLASSES)
    assert "wsss predict --seg-dir" in result.output
    again = CliRunner().invoke(main, ["convert-weights", "--from", "pcaa", str(official_ckpt), "--out",
                                      str(tmp_path / "cli")])
    assert again.exit_code != 0 and "already holds" in again.output


def test_mismatched_checkpoints_are_refused_with_the_keys(official_ckpt, tmp_path):
    state = torch.load(official_ckpt, weights_only=True)
    extra = dict(state, **{"module.head.extra.weight": torch.zeros(1)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(ConfigError, match="head.extra.weight"):
        convert_pcaa(tmp_path / "extra.pth", tmp_path / "a", class_names=CITYSCAPES_CLASSES)
    short = {k: v for k, v in state.items() if "layer4.2.bn3" not in k}
    torch.save(short, tmp_path / "short.pth")
    with pytest.raises(ConfigError, match="missing.*layer4.2.bn3"):
        convert_pcaa(tmp_path / "short.pth", tmp_path / "b", class_names=CITYSCAPES_CLASSES)
    out = convert_pcaa(tmp_path / "short.pth", tmp_path / "c", class_names=CITYSCAPES_CLASSES, strict=False)
    assert (out / "model.safetensors").is_file()
    with pytest.raises(ConfigError, match="19 classes but 21"):
        convert_pcaa(official_ckpt, tmp_path / "d", class_names=["c"] * 21)
