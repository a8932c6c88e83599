"""``report.html``: one self-contained page with everything a run folder holds.

A recipe's ``report`` step writes it beside ``report.md``; ``wsss report RUN_DIR`` writes it for any
folder of wsss outputs. It shows, from what the stages already wrote (nothing is recomputed):

* the recipe's tables (``report/report.json``), as in ``report.md``;
* every evaluation found under the folder: ``eval.json`` of ``wsss eval`` / ``eval-cam`` (and
  ``eval_cam.json`` beside a CAM folder), with mIoU, FP and FN, and per class a bar split into
  IoU, FP and FN (they add up to 100% of the class's union, so the bar shows at a glance whether a
  class fails by over- or under-covering), plus the threshold curve of a CAM sweep as an inline
  SVG (threshold against mIoU, FP and FN);
* every figure (``figure.png``: image / CAM / seed / boundary / IR label / pseudo mask /
  prediction / ground truth per row) and sweep plot PNG, embedded, with a legend of the class
  colours.

Images are embedded as base64 ``data:`` URIs, so the one file can be mailed or attached as it is.
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any, Sequence

from wsss.io import voc_palette, write_text

__all__ = ["collect_run", "render_html", "write_html_report"]

_SKIP_DIRS = {".git", "__pycache__"}
_MAX_IMAGE_BYTES = 8 << 20  # larger PNGs are linked, not embedded


def _walk(root: Path, names: set[str], max_depth: int = 4) -> list[Path]:
    """Files called one of ``names`` under ``root`` (at most ``max_depth`` folders down), sorted;
    folders holding thousands of masks are listed once, not descended into."""
    found: list[Path] = []

    def visit(folder: Path, depth: int) -> None:
        try:
            entries = sorted(folder.iterdir())
        except OSError:
            return
        for e in entries:
            if e.is_dir():
                if depth < max_depth and e.name not in _SKIP_DIRS:
                    visit(e, depth + 1)
            elif e.name in names:
                found.append(e)

    visit(root, 0)
    return found


def _label(path: Path, root: Path) -> str:
    rel = path.parent.relative_to(root) if path.parent != root else Path(".")
    return str(rel)


def collect_run(run_dir: str | Path) -> dict[str, Any]:
    """What a run folder holds, for :func:`render_html`: ``tables`` (a recipe report's tables, or
    []), ``evals`` (list of {name, kind, data}), ``figures`` and ``plots`` (PNG paths)."""
    root = Path(run_dir)
    if not root.is_dir():
        from wsss.io import WsssDataError

        raise WsssDataError(f"run folder not found: {root}")
    tables: list = []
    evals: list[dict] = []
    # one walk: run folders hold mask folders of thousands of files, each listed on the way
    found = _walk(root, {"report.json", "eval.json", "eval_cam.json", "figure.png", "eval.png", "eval_cam.png"})
    for p in (f for f in found if f.suffix == ".json"):
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if p.name == "report.json":
            if isinstance(data, list):
                tables.extend(data)
            continue
        if not isinstance(data, dict):
            continue
        best = data.get("best", data)
        if not isinstance(best, dict) or "mIoU" not in best:
            continue
        name = _label(p, root) + ("" if p.name == "eval.json" else f" ({p.name})")
        evals.append({"name": name, "kind": "eval-cam" if "curve" in data else "eval", "data": data})
    figures = [f for f in found if f.name == "figure.png"]
    plots = [f for f in found if f.name in ("eval.png", "eval_cam.png")]
    return {"root": str(root), "tables": tables, "evals": evals, "figures": figures, "plots": plots}


# ----------------------------------------------------------------------------- rendering
_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}
h1{font-size:1.5em} h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ccc}
h3{font-size:1.05em}
table{border-collapse:collapse;margin:.5em 0 1em} td,th{border:1px solid #ccc;padding:3px 8px}
th{background:#f3f3f3} td.num{text-align:right;font-variant-numeric:tabular-nums}
.bar{display:flex;width:360px;height:14px;border:1px solid #999}
.bar span{display:block;height:100%} .iou{background:#3a3} .fp{background:#d33} .fn{background:#e90}
.legend span.sw{display:inline-block;width:14px;height:14px;border:1px solid #666;vertical-align:middle;margin:0 4px 0 12px}
img{max-width:100%;border:1px solid #ddd} .note{color:#555}
"""


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _num(v: Any, digits: int = 2) -> str:
    return "-" if v is None else f"{float(v):.{digits}f}"


def _table_html(table: dict) -> str:
    rows = table.get("rows", {})
    cols = list(dict.fromkeys(c for cells in rows.values() for c in cells))
    out = [f"<h3>{_esc(table.get('title', ''))}</h3>"]
    if table.get("note"):
        out.append(f"<p class='note'>{_esc(table['note'])}</p>")
    out.append("<table><tr><th></th>" + "".join(f"<th>{_esc(c)} mIoU (FP / FN)</th>" for c in cols) + "</tr>")
    for row, cells in rows.items():
        tds = []
        for c in cols:
            s = cells.get(c)
            tds.append("<td class='num'>-</td>" if not s else
                       f"<td class='num'>{_num(s['mIoU'])} ({_num(s['FP'], 1)} / {_num(s['FN'], 1)})</td>")
        out.append(f"<tr><th>{_esc(row)}</th>{''.join(tds)}</tr>")
    out.append("</table>")
    return "\n".join(out)


def _class_bars(per_class: dict) -> str:
    out = ["<table><tr><th>class</th><th>IoU</th><th>FP</th><th>FN</th><th>"
           "<span class='legend'><span class='sw iou'></span>IoU<span class='sw fp'></span>FP"
           "<span class='sw fn'></span>FN</span> (share of the class's union)</th></tr>"]
    for name, s in per_class.items():
        iou, fp, fn = (s.get("IoU"), s.get("FP"), s.get("FN"))
        if iou is None or fp is None or fn is None or any(v != v for v in (iou, fp, fn)):  # NaN: class absent
            out.append(f"<tr><td>{_esc(name)}</td><td colspan='4'>not in the ground truth or the predictions</td></tr>")
            continue
        bar = (f"<div class='bar'><span class='iou' style='width:{iou:.2f}%'></span>"
               f"<span class='fp' style='width:{fp:.2f}%'></span><span class='fn' style='width:{fn:.2f}%'></span></div>")
        out.append(f"<tr><td>{_esc(name)}</td><td class='num'>{_num(iou, 1)}</td><td class='num'>{_num(fp, 1)}</td>"
                   f"<td class='num'>{_num(fn, 1)}</td><td>{bar}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def _curve_svg(curve: Sequence[dict], best: float | None, w: int = 420, h: int = 220) -> str:
    """Threshold (x, 0..max) against mIoU / FP / FN (y, 0..100) as an inline SVG."""
    pts = [c for c in curve if all(k in c for k in ("threshold", "mIoU", "FP", "FN"))]
    if len(pts) < 2:
        return ""
    x0, x1 = min(p["threshold"] for p in pts), max(p["threshold"] for p in pts)
    span = (x1 - x0) or 1.0
    m = 30

    def xy(t: float, v: float) -> str:
        return f"{m + (t - x0) / span * (w - 2 * m):.1f},{h - m - v / 100 * (h - 2 * m):.1f}"

    lines = []
    for key, colour in (("mIoU", "#3a3"), ("FP", "#d33"), ("FN", "#e90")):
        path = " ".join(xy(p["threshold"], float(p[key])) for p in pts)
        lines.append(f"<polyline fill='none' stroke='{colour}' stroke-width='2' points='{path}'><title>{key}</title></polyline>")
    marks = ""
    if best is not None:
        bx = xy(best, 0).split(",")[0]
        marks = f"<line x1='{bx}' x2='{bx}' y1='{m}' y2='{h - m}' stroke='#555' stroke-dasharray='3,3'/>"
    axis = (f"<line x1='{m}' y1='{h - m}' x2='{w - m}' y2='{h - m}' stroke='#000'/>"
            f"<line x1='{m}' y1='{m}' x2='{m}' y2='{h - m}' stroke='#000'/>"
            f"<text x='{m}' y='{h - 8}' font-size='11'>{x0:g}</text>"
            f"<text x='{w - m - 20}' y='{h - 8}' font-size='11'>{x1:g}</text>"
            f"<text x='{w / 2 - 40:.0f}' y='{h - 8}' font-size='11'>background threshold</text>"
            f"<text x='2' y='{m + 4}' font-size='11'>100</text><text x='12' y='{h - m}' font-size='11'>0</text>")
    legend = ("<text x='{0}' y='14' font-size='11' fill='#3a3'>mIoU</text>"
              "<text x='{1}' y='14' font-size='11' fill='#d33'>FP</text>"
              "<text x='{2}' y='14' font-size='11' fill='#e90'>FN</text>").format(w - 130, w - 90, w - 60)
    return f"<svg width='{w}' height='{h}' xmlns='http://www.w3.org/2000/svg'>{axis}{marks}{''.join(lines)}{legend}</svg>"


def _eval_html(ev: dict) -> str:
    data = ev["data"]
    best = data.get("best", data)
    head = (f"<h3>{_esc(ev['name'])}</h3><p>mIoU <b>{_num(best.get('mIoU'))}</b>, FP {_num(best.get('FP'), 1)}, "
            f"FN {_num(best.get('FN'), 1)}")
    if "pixel_acc" in best:
        head += f", pixel accuracy {_num(best['pixel_acc'], 1)}"
    if "num_images" in data:
        head += f", {int(data['num_images'])} images"
    if ev["kind"] == "eval-cam":
        head += f"; best background threshold {_num(data.get('best_threshold'))}"
        fixed = data.get("fixed")
        if isinstance(fixed, dict) and "mIoU" in fixed:
            head += f"; at the fixed threshold {_num(fixed.get('threshold'))}: mIoU {_num(fixed['mIoU'])}"
    head += "</p>"
    parts = [head]
    if ev["kind"] == "eval-cam":
        parts.append(_curve_svg(data.get("curve", []), data.get("best_threshold")))
    if isinstance(best.get("per_class"), dict):
        parts.append(_class_bars(best["per_class"]))
    return "\n".join(p for p in parts if p)


def _legend(class_names: Sequence[str]) -> str:
    pal = voc_palette()
    items = []
    for i, name in enumerate(class_names):
        r, g, b = (int(v) for v in pal[i])
        items.append(f"<span class='sw' style='background:rgb({r},{g},{b})'></span>{_esc(name)}")
    r, g, b = (int(v) for v in pal[255])
    items.append(f"<span class='sw' style='background:rgb({r},{g},{b})'></span>ignore (255)")
    return "<p class='legend'>" + "".join(items) + "</p>"


def _image_html(path: Path, root: Path, embed: bool) -> str:
    cap = _esc(_label(path, root) + "/" + path.name)
    if embed and path.stat().st_size <= _MAX_IMAGE_BYTES:
        b64 = base64.b64encode(path.read_bytes()).decode("ascii")
        src = f"data:image/png;base64,{b64}"
    else:
        src = _esc(path.resolve().as_uri())
    return f"<figure><img src='{src}' alt='{cap}'><figcaption>{cap}</figcaption></figure>"


def render_html(info: dict, title: str | None = None, embed: bool = True) -> str:
    """The page for :func:`collect_run`'s result."""
    root = Path(info["root"])
    class_names: list[str] = []
    for ev in info["evals"]:
        pc = ev["data"].get("best", ev["data"]).get("per_class")
        if isinstance(pc, dict) and len(pc) > len(class_names):
            class_names = list(pc)
    body = [f"<h1>{_esc(title or 'wsss report: ' + str(root))}</h1>"]
    if info["tables"]:
        body.append("<h2>Tables</h2>")
        body.extend(_table_html(t) for t in info["tables"])
    if info["evals"]:
        body.append("<h2>Evaluations</h2>")
        body.extend(_eval_html(ev) for ev in info["evals"])
    if info["figures"] or info["plots"]:
        body.append("<h2>Pictures</h2>")
        if class_names:
            body.append(_legend(class_names))
        body.extend(_image_html(p, root, embed) for p in list(info["figures"]) + list(info["plots"]))
    if len(body) == 1:
        body.append("<p>No evaluations, tables or figures found in this folder.</p>")
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>{_esc(title or 'wsss report')}</title><style>{_CSS}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")


def write_html_report(run_dir: str | Path, out: str | Path | None = None, title: str | None = None,
                      embed: bool = True) -> Path:
    """Collect ``run_dir`` and write the page (default ``run_dir/report.html``), atomically."""
    out = Path(out) if out is not None else Path(run_dir) / "report.html"
    page = render_html(collect_run(run_dir), title=title, embed=embed)
    write_text(out, page)
    return out
