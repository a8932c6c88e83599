"""report.html: parsed back, every number and picture on the page is the one in the run folder."""
from __future__ import annotations

import base64
import json
from html.parser import HTMLParser

import numpy as np
from click.testing import CliRunner

from wsss.cli import main
from wsss.io import write_image
from wsss.report import collect_run, write_html_report


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.text: list[str] = []
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        if data.strip():
            self.text.append(data.strip())


def _parse(path) -> _Page:
    p = _Page()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def _run_folder(tmp_path):
    root = tmp_path / "run"
    per_class = {"background": {"IoU": 80.0, "FP": 15.0, "FN": 5.0},
                 "disc": {"IoU": 40.0, "FP": 10.0, "FN": 50.0},
                 "square": {"IoU": float("nan"), "FP": float("nan"), "FN": float("nan")}}
    (root / "pl").mkdir(parents=True)
    (root / "pl" / "eval.json").write_text(json.dumps(
        {"mIoU": 60.0, "FP": 12.5, "FN": 27.5, "pixel_acc": 90.0, "per_class": per_class, "num_images": 3}))
    curve = [{"threshold": t, "mIoU": 10 + 100 * t, "FP": 50 - 100 * t, "FN": 10 + 50 * t} for t in (0.0, 0.1, 0.2, 0.3)]
    (root / "seed").mkdir()
    (root / "seed" / "eval.json").write_text(json.dumps(
        {"best_threshold": 0.3, "best": {"mIoU": 40.0, "FP": 20.0, "FN": 25.0, "per_class": per_class},
         "curve": curve, "fixed": {"threshold": 0.15, "mIoU": 25.0, "FP": 30.0, "FN": 45.0}, "num_images": 3}))
    (root / "report").mkdir()
    (root / "report" / "report.json").write_text(json.dumps(
        [{"title": "Table 1 shape", "note": "a note", "rows": {"CAM": {"Seed": {"mIoU": 40.0, "FP": 20.0, "FN": 25.0},
                                                                     "P.L.": None}}}]))
    (root / "figure").mkdir()
    img = np.zeros((8, 12, 3), np.uint8)
    img[2:5, 3:9] = (200, 10, 30)
    write_image(root / "figure" / "figure.png", img)
    # a folder of masks is not an evaluation and is not searched for one
    (root / "pseudo").mkdir()
    (root / "pseudo" / "x.json").write_text("{}")
    return root


def test_report_holds_the_tables_evals_curves_and_pictures_of_the_folder(tmp_path):
    root = _run_folder(tmp_path)
    info = collect_run(root)
    assert [e["name"] for e in info["evals"]] == ["pl", "seed"]
    assert [e["kind"] for e in info["evals"]] == ["eval", "eval-cam"]
    out = write_html_report(root)
    assert out == root / "report.html"
    page = _parse(out)
    text = " ".join(page.text)
    # the recipe table, with the missing cell as "-"
    assert "Table 1 shape" in text and "a note" in text and "40.00 (20.0 / 25.0)" in text
    tds = [t for t in page.text if t == "-"]
    assert tds, "a missing table cell is shown as '-'"
    # each eval's headline numbers; the sweep's best and fixed thresholds
    assert "60.00" in text and "best background threshold 0.30" in text and "mIoU 25.00" in text
    # per-class bars: IoU / FP / FN widths are the class's shares (they add up to 100)
    spans = [(a.get("class"), a.get("style")) for tag, a in page.tags if tag == "span" and a.get("style", "").startswith("width")]
    widths = [(c, float(s.split(":")[1].rstrip("%"))) for c, s in spans]
    assert widths[:6] == [("iou", 80.0), ("fp", 15.0), ("fn", 5.0), ("iou", 40.0), ("fp", 10.0), ("fn", 50.0)]
    assert "not in the ground truth or the predictions" in text  # the NaN class
    # the threshold curve: one SVG with three lines of as many points as the curve
    lines = [a["points"].split() for tag, a in page.tags if tag == "polyline"]
    assert len(lines) == 3 and all(len(pts) == 4 for pts in lines)
    # mIoU rises with the threshold in this curve: its SVG y (downwards) falls
    ys = [float(p.split(",")[1]) for p in lines[0]]
    assert ys == sorted(ys, reverse=True)
    # the figure, embedded byte for byte, and the class legend
    srcs = [a["src"] for tag, a in page.tags if tag == "img"]
    assert len(srcs) == 1 and srcs[0].startswith("data:image/png;base64,")
    assert base64.b64decode(srcs[0].split(",", 1)[1]) == (root / "figure" / "figure.png").read_bytes()
    assert "disc" in text and "ignore (255)" in text


def test_report_command_and_linked_images(tmp_path):
    root = _run_folder(tmp_path)
    out = tmp_path / "page.html"
    r = CliRunner().invoke(main, ["report", str(root), "--out", str(out), "--link-images", "--title", "My run"])
    assert r.exit_code == 0, r.output
    assert f"report: {out}" in r.output
    page = _parse(out)
    assert "My run" in page.text
    srcs = [a["src"] for tag, a in page.tags if tag == "img"]
    assert srcs == [(root / "figure" / "figure.png").resolve().as_uri()]
    r = CliRunner().invoke(main, ["report", str(tmp_path / "nope")])
    assert r.exit_code != 0 and "Traceback" not in r.output


def test_empty_folder_says_so(tmp_path):
    page = _parse(write_html_report(tmp_path))
    assert any("No evaluations" in t for t in page.text)
