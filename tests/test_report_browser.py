"""The report and the explanations page in a real headless browser (Chromium): they load without
console errors and every image is displayed. Slow: renders two reports."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from report_fake_run import make_fake_run

pytestmark = pytest.mark.slow

BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--no-first-run", "--virtual-time-budget=8000", "--enable-logging=stderr", "--v=0"]
PYTHON_BUILT = ("dataset", "meta", "attributions", "dac_scores", "dac_curves", "channel_mass", "channel_tests",
                "channel_share_ci")

#: recorded before anything else runs: uncaught errors, failed resources, console.error calls
PROBE_HEAD = """<script>window.__errs=[];window.addEventListener('error',function(e){window.__errs.push(String(
e.message||(e.target&&(e.target.src||e.target.href))||'error'));},true);(function(){var ce=console.error;
console.error=function(){window.__errs.push([].join.call(arguments,' '));ce.apply(console,arguments);};})();</script>"""
#: after load: every <img> decoded with a size, the result written into the DOM
PROBE_BODY = """<script>window.addEventListener('load',function(){setTimeout(function(){var imgs=[].slice.call(
document.images);var bad=imgs.filter(function(i){return !(i.complete&&i.naturalWidth>0&&i.naturalHeight>0);});
var d=document.createElement('pre');d.id='chanstat-probe';d.textContent=JSON.stringify({total:imgs.length,
broken:bad.length,errors:window.__errs});document.body.appendChild(d);},300);});</script>"""


def open_in_browser(page: Path, tmp_path: Path) -> dict:
    """Load ``page`` (a copy with the probes) in headless Chromium; the probe's record plus console errors."""
    text = page.read_text(encoding="utf-8")
    text = re.sub(r"(<head[^>]*>)", lambda m: m.group(1) + PROBE_HEAD, text, count=1)
    text = text.replace("</body>", PROBE_BODY + "</body>")
    probe = tmp_path / f"probe_{page.name}"
    probe.write_text(text, encoding="utf-8")
    proc = subprocess.run([BROWSER, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", probe.as_uri()],
                          capture_output=True, text=True, timeout=240)
    m = re.search(r'<pre id="chanstat-probe">(.*?)</pre>', proc.stdout, re.S)
    assert m, f"the page did not finish loading: {proc.stderr[-2000:]}"
    import html

    record = json.loads(html.unescape(m.group(1)))
    record["console"] = [line for line in proc.stderr.splitlines()
                         if "CONSOLE" in line and ("Uncaught" in line or ":ERROR:" in line or "error" in line.lower())]
    return record


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    if BROWSER is None:
        pytest.skip("no Chromium (apt-get install -y chromium)")
    from chanstat.report import render

    full = make_fake_run(tmp_path_factory.mktemp("browser") / "full")
    python = make_fake_run(tmp_path_factory.mktemp("browser") / "python", tables=PYTHON_BUILT)
    for run in (full, python):
        render(run, formats=("html",), engine="builtin")
    return {"full": full, "python": python}


@pytest.mark.parametrize("which", ["full", "python"])
def test_report_and_explanations_page_load_and_show_every_image(rendered, which, tmp_path):
    run = rendered[which]
    for page in (run / "report.html", run / "explanations.html"):
        assert page.is_file(), page
        record = open_in_browser(page, tmp_path)
        assert record["total"] > 0, page.name
        assert record["broken"] == 0, (page.name, record)
        assert record["errors"] == [] and record["console"] == [], (page.name, record)


def test_first_screen_and_a_python_built_run_show_no_stage_banners(rendered):
    full = (rendered["full"] / "report.html").read_text(encoding="utf-8")
    first = full[full.find('id="The-answer"'):full.find('id="Run-overview"')]
    assert "strong evidence" in first and "Counterfactuals:" in first and "<img" in first
    python = (rendered["python"] / "report.html").read_text(encoding="utf-8")
    assert "Stage not run" not in python and "could not be drawn" not in python
    assert "carries the difference" in python
