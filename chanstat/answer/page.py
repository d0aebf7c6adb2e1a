"""The offline explanations page: every image's best explanation, sorted by DAC (static HTML, no server).

One file, ``explanations.html`` in the run directory: the data (escaped JSON) and one PNG per
image (rows: real, counterfactual, mask, hybrid; a column per channel) are embedded, and a few
lines of JavaScript page through them and filter by transition and score. Nothing is fetched.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np

from chanstat.answer.explanations import _as_run, explanations

ROWS = ("real", "counterfactual", "mask", "hybrid")


def _grey(a: np.ndarray, top: float) -> np.ndarray:
    return np.clip(np.asarray(a, dtype=np.float64) / (top if top > 0 else 1.0), 0.0, 1.0)


def composite(real: np.ndarray, counterfactual: np.ndarray | None, mask: np.ndarray | None, gap: int = 2) -> np.ndarray:
    """(4 * H + gaps, C * W + gaps) grey mosaic: real, counterfactual, mask and hybrid per channel.

    Each channel is scaled by the 99.5th percentile of its real and counterfactual pixels; the
    hybrid is ``m * x + (1 - m) * x'``. Missing panels are mid-grey.
    """
    C, H, W = real.shape
    out = np.full((4 * H + 3 * gap, C * W + (C - 1) * gap), 1.0)
    for c in range(C):
        pair = real[c] if counterfactual is None else np.concatenate([real[c].ravel(), counterfactual[c].ravel()])
        top = float(np.quantile(pair, 0.995)) if pair.size else 1.0
        m = None if mask is None else mask[c if mask.shape[0] == C else 0]
        panels = [
            _grey(real[c], top),
            None if counterfactual is None else _grey(counterfactual[c], top),
            None if m is None else np.clip(m, 0, 1),
            None if (m is None or counterfactual is None) else _grey(m * real[c] + (1 - m) * counterfactual[c], top),
        ]
        for r, p in enumerate(panels):
            y, x = r * (H + gap), c * (W + gap)
            out[y : y + H, x : x + W] = 0.5 if p is None else p
    return out


def png(image: np.ndarray) -> str:
    """A grey image in [0, 1] as a base64 PNG data URI."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8), mode="L").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _masks(run) -> dict[tuple[str, str], tuple[str, list[int] | None]]:
    """(method, strategy) -> (array name, data-set rows it holds)."""
    if not run.has("dac_masks"):
        return {}
    group = run.group_attrs("dac_masks")
    out = {}
    for name in run.array_names("dac_masks"):
        attrs = run.array_attrs("dac_masks", name)
        method, _, strategy = name.partition(".")
        rows = attrs.get("samples", group.get("samples"))
        out[(str(attrs.get("method") or method), str(attrs.get("strategy") or strategy))] = (
            name,
            None if rows is None else [int(r) for r in rows],
        )
    return out


def mask_of(run, masks: dict, method: str, strategy: str, sample: int) -> np.ndarray | None:
    """The stored optimal mask of one image, (C|1, H, W), or None."""
    hit = masks.get((method, strategy))
    if hit is None:
        return None
    name, rows = hit
    if rows is not None and sample not in rows:
        return None
    row = rows.index(sample) if rows is not None else sample
    arr = run.array("dac_masks", name, samples=[row])[0].astype(np.float32)
    return arr[None] if arr.ndim == 2 else arr


def _json_for_script(obj) -> str:
    """JSON that cannot close its <script> element (``<``, ``>``, ``&`` escaped)."""
    text = json.dumps(obj, ensure_ascii=True, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _clean(v):
    if isinstance(v, (float, np.floating)):
        return None if not np.isfinite(v) else round(float(v), 4)
    if isinstance(v, (np.integer,)):
        return int(v)
    return v if isinstance(v, (int, str)) or v is None else str(v)


def write_explanations_page(
    run, path: str | Path | None = None, per_page: int = 20, max_images: int | None = 2000
) -> Path:
    """Write the offline page of every image's best explanation (default ``<run>/explanations.html``).

    Parameters
    ----------
    run : a run directory holding ``dac_scores`` (and ``dataset`` for the images).
    path : where to write it.
    per_page : images per page.
    max_images : the best this many images only (None: all).
    """
    run = _as_run(run)
    table = explanations(run, top=max_images)
    channels = list(run.channels)
    stored = set(run.array_names("dataset")) if run.has("dataset") else set()
    masks = _masks(run)
    records = []
    for row in table.to_dict("records"):
        s = int(row["sample"])
        rec = {k: _clean(v) for k, v in row.items()}
        if "images" in stored:
            real = run.array("dataset", "images", samples=[s])[0].astype(np.float32)
            cf = (
                run.array("dataset", "counterfactuals", samples=[s])[0].astype(np.float32)
                if "counterfactuals" in stored
                else None
            )
            m = mask_of(run, masks, str(row["method"]), str(row["strategy"]), s)
            rec["image"] = png(composite(real, cf, m))
            rec["has_mask"] = m is not None
        records.append(rec)
    title = f"Explanations — {run.path.name}"
    payload = {"channels": channels, "rows": list(ROWS), "per_page": int(per_page), "records": records}
    page = _TEMPLATE.replace("__TITLE__", html.escape(title)).replace("__DATA__", _json_for_script(payload))
    out = Path(path) if path is not None else run.path / "explanations.html"
    tmp = out.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out


_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>__TITLE__</title>
<style>
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
.bar{display:flex;gap:1em;align-items:center;flex-wrap:wrap;margin-bottom:1em}
.card{display:inline-block;vertical-align:top;margin:0 1em 1.2em 0;border:1px solid #ddd;padding:.5em;border-radius:4px}
.card img{image-rendering:pixelated;display:block}
.meta{font-size:.85em;margin:.2em 0}
.cols{font-size:.75em;color:#555}
</style></head><body>
<h1>__TITLE__</h1>
<p>Each image's best explanation across attribution methods and mask strategies (highest DAC), best first.
Rows of each picture: real, counterfactual, optimal mask, hybrid (real where the mask is on); a column per channel.
Grey panels: not stored.</p>
<div class="bar">
<label>Transition <select id="transition"><option value="">all</option></select></label>
<label>DAC at least <input id="min" type="number" step="0.05" value=""></label>
<button id="prev" type="button">previous</button><span id="where"></span><button id="next" type="button">next</button>
</div>
<div id="cards"></div>
<script id="data" type="application/json">__DATA__</script>
<script>
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("data").textContent);
  var page = 0, shown = data.records;
  var sel = document.getElementById("transition");
  var seen = {};
  data.records.forEach(function (r) {
    if (r.transition && !seen[r.transition]) {
      seen[r.transition] = true;
      var o = document.createElement("option"); o.value = r.transition; o.textContent = r.transition; sel.appendChild(o);
    }
  });
  function fmt(v) { return (v === null || v === undefined) ? "\\u2013" : (typeof v === "number" ? String(Math.round(v * 1000) / 1000) : String(v)); }
  function filter() {
    var t = sel.value, m = parseFloat(document.getElementById("min").value);
    shown = data.records.filter(function (r) { return (!t || r.transition === t) && (isNaN(m) || (r.dac !== null && r.dac >= m)); });
    page = 0; draw();
  }
  function draw() {
    var n = Math.max(1, Math.ceil(shown.length / data.per_page));
    page = Math.min(Math.max(page, 0), n - 1);
    document.getElementById("where").textContent = "page " + (page + 1) + " of " + n + " (" + shown.length + " images)";
    var box = document.getElementById("cards");
    while (box.firstChild) { box.removeChild(box.firstChild); }
    shown.slice(page * data.per_page, (page + 1) * data.per_page).forEach(function (r) {
      var card = document.createElement("div"); card.className = "card";
      var head = document.createElement("div"); head.className = "meta";
      head.textContent = "#" + r.rank + "  image " + r.sample + "  " + (r.transition || "") + "  DAC " + fmt(r.dac) +
        "  mask " + fmt(r.mask_size) + "  " + r.method + " / " + r.strategy +
        (r.Metadata_Well ? "  well " + (r.Metadata_Plate ? r.Metadata_Plate + " " : "") + r.Metadata_Well : "");
      card.appendChild(head);
      if (r.image) {
        var img = document.createElement("img");
        img.src = r.image; img.alt = "image " + r.sample + ": real, counterfactual, mask, hybrid per channel";
        img.onload = function () { img.width = img.naturalWidth * 2; };
        card.appendChild(img);
      }
      var cols = document.createElement("div"); cols.className = "cols";
      cols.textContent = "columns: " + data.channels.join(", ") + "; rows: " + data.rows.join(", ");
      card.appendChild(cols);
      box.appendChild(card);
    });
  }
  sel.addEventListener("change", filter);
  document.getElementById("min").addEventListener("input", filter);
  document.getElementById("prev").addEventListener("click", function () { page -= 1; draw(); });
  document.getElementById("next").addEventListener("click", function () { page += 1; draw(); });
  draw();
})();
</script>
</body></html>
"""
