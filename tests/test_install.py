"""An installed wheel (not the source checkout) carries its template and configs and runs from any folder."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = {
    "chanstat/resources/demo.toml": ROOT / "analyses" / "demo.toml",
    "chanstat/resources/generator.toml": ROOT / "analyses" / "generator.toml",
    "chanstat/resources/sharded.toml": ROOT / "analyses" / "sharded.toml",
    "chanstat/resources/chanstat_report.py": ROOT / "reports" / "chanstat_report.py",
}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The project built as a wheel and installed (without dependencies) into a folder of its own."""
    work = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(work / "dist"), str(ROOT)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (work / "dist").glob("chanstat-*.whl")
    target = work / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                              str(wheel)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-2000:]
    empty = work / "elsewhere"
    empty.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "PYTHONNOUSERSITE": "1"}
    return wheel, target, empty, env


def _run(installed, *args, timeout=900):
    _, _, empty, env = installed
    return subprocess.run([sys.executable, *args], cwd=empty, env=env, capture_output=True, text=True, timeout=timeout)


def test_wheel_holds_the_template_and_the_configs_as_files(installed):
    wheel = installed[0]
    with zipfile.ZipFile(wheel) as archive:
        for name, source in SHIPPED.items():
            assert archive.read(name) == source.read_bytes(), name


def test_installed_package_finds_its_own_resources_from_any_folder(installed):
    _, target, _, _ = installed
    probe = _run(installed, "-c", "import chanstat, chanstat.resources as r, chanstat.report.renderer as t; "
                 "print(chanstat.__file__); print(r.config_path('demo')); print(t.default_template())")
    assert probe.returncode == 0, probe.stderr[-2000:]
    lines = probe.stdout.strip().splitlines()
    assert all(Path(line).resolve().is_relative_to(target.resolve()) for line in lines), lines


def test_installed_package_renders_a_run_from_an_empty_folder(installed, quick_run):
    _, _, empty, _ = installed
    run = empty / "run"
    shutil.copytree(quick_run, run)
    for name in ("report.html", "report.pdf"):
        (run / name).unlink(missing_ok=True)
    result = _run(installed, "-m", "chanstat", "report", "run", "--to", "html")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "<html" in (run / "report.html").read_text(errors="replace").lower()


def test_installed_wheel_runs_the_quick_demo_from_an_empty_folder(installed):
    _, _, empty, _ = installed
    result = _run(installed, "-m", "chanstat", "demo", "--quick", "--out", "demo", timeout=3000)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (empty / "demo" / "report.html").is_file()
