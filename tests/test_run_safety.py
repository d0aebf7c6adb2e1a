"""Nothing lost, nothing silent: config validation, --force, locking, resume fingerprints, CLI errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from chanstat import pipeline
from chanstat.cli import main
from chanstat.config import ConfigError
from chanstat.rundir import LOCK_FILE, MARKER, RunDirectory, RunDirectoryBusy

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "run": {"seed": 0, "device": "cpu"},
    "data": {"synthetic": {"n_plates": 1, "wells_per_class": 2, "sites_per_well": 2, "size": 24}},
    "model": {"widths": [4], "epochs": 1, "min_epochs": 1, "batch_size": 8},
    "counterfactual": {"provider": "oracle"},
    "attribution": {"methods": ["saliency", "residual"]},
}


@pytest.mark.parametrize("config, message", [
    ({"modle": {}}, r"unknown section \[modle\] \(did you mean 'model'\?\)"),
    ({"run": {"sed": 7}}, r"\[run\] unknown key 'sed' \(did you mean 'seed'\?\)"),
    ({"model": {"lrate": 10}}, r"\[model\] unknown key 'lrate' \(did you mean 'lr'\?\)"),
    ({"attribution": {"method": ["ig"]}}, r"\[attribution\] unknown key 'method' \(did you mean 'methods'\?\)"),
    ({"dac": {"step": 8}}, r"\[dac\] unknown key 'step' \(did you mean 'steps'\?\)"),
    ({"model": {"epochs": -5}}, r"\[model\] epochs: Input should be greater than or equal to 1"),
    ({"dac": {"steps": 2.7}}, r"\[dac\] steps: .*fractional part"),
    ({"stats": {"n_boot": -1}}, r"\[stats\] n_boot: .*greater than or equal to 0"),
    ({"run": {"device": "tpu"}}, r"\[run\] device: .*'tpu'"),
    ({"attribution": {"options": {"ig": {"n_step": 3}}}}, r"has no key 'n_step' \(did you mean 'n_steps'\?\)"),
    ({"counterfactual": {"provider": "optimse"}}, r"unknown provider 'optimse' \(did you mean 'optimise'\?\)"),
    ({"data": {"synthetic": {"size": "big"}}}, r"\[data.synthetic\] size"),
    ({"report": {"formats": ["html", "docx"]}}, r"\[report\] formats"),
])
def test_config_typos_and_bad_values_are_errors(config, message):
    with pytest.raises(ConfigError, match=message):
        pipeline.load_config(config)


def test_validated_config_fills_defaults_and_every_shipped_config_is_valid():
    cfg, _ = pipeline.load_config({"dac": {}})
    assert cfg["dac"]["schedule"] == "adaptive" and cfg["model"]["epochs"] == 30 and "metrics" not in cfg
    for path in sorted((ROOT / "analyses").glob("*.toml")):
        pipeline.load_config(path)
        pipeline.load_config(path, quick=True)


def test_force_never_deletes_a_folder_that_is_not_a_run_directory(tmp_path):
    users = tmp_path / "my_data"
    users.mkdir()
    (users / "precious.csv").write_text("keep me")
    with pytest.raises(ConfigError, match="not a chanstat run directory"):
        pipeline.run(TINY, users, force=True)
    assert (users / "precious.csv").read_text() == "keep me"
    # a bad config fails before anything is touched, also for a real run directory
    run = RunDirectory(tmp_path / "run", create=True)
    (run.path / "table.parquet").write_text("old")
    with pytest.raises(ConfigError, match="device"):
        pipeline.run({**TINY, "run": {"device": "tpu"}}, run.path, force=True)
    assert (run.path / "table.parquet").exists()


def test_cli_force_on_parent_folder_is_refused_with_one_line(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("x")
    config = tmp_path / "bad.toml"
    config.write_text('[run]\ndevice = "tpu"\n')
    code = main(["run", str(config), "--out", str(tmp_path), "--force"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "device" in err
    assert (tmp_path / "mine.txt").exists()


def test_second_run_into_a_locked_directory_is_refused(tmp_path):
    from filelock import FileLock

    out = RunDirectory(tmp_path / "run", create=True).path
    lock = FileLock(str(out / LOCK_FILE))
    lock.acquire()
    (out / (LOCK_FILE + ".owner")).write_text("pid 4242 on elsewhere")
    try:
        with pytest.raises(RunDirectoryBusy, match="pid 4242"):
            pipeline.run(TINY, out, resume=True)
    finally:
        lock.release()


def test_resume_reruns_exactly_what_a_config_change_invalidates(tmp_path):
    out = tmp_path / "run"
    pipeline.run(TINY, out, progress=False, log=lambda m: None)
    assert (out / MARKER).is_file()
    first = json.loads((out / "provenance.json").read_text())["stages"]
    # unchanged: every stage is kept
    pipeline.run(TINY, out, resume=True, progress=False, log=lambda m: None)
    again = json.loads((out / "provenance.json").read_text())["stages"]
    assert all(again[name].get("resumed") for name in first)
    # a changed attribution section re-runs attribution only
    changed = {**TINY, "attribution": {"methods": ["saliency"]}}
    pipeline.run(changed, out, resume=True, progress=False, log=lambda m: None)
    stages = json.loads((out / "provenance.json").read_text())["stages"]
    assert stages["data"].get("resumed") and stages["model"].get("resumed") and not stages["attribution"].get("resumed")
    assert RunDirectory(out).array_names("attributions") == ["saliency"]
    # a new seed changes the data, so everything downstream re-runs
    pipeline.run({**changed, "run": {"seed": 3, "device": "cpu"}}, out, resume=True, progress=False, log=lambda m: None)
    stages = json.loads((out / "provenance.json").read_text())["stages"]
    assert not any(stage.get("resumed") for stage in stages.values())
    assert stages["data"]["fingerprint"] != first["data"]["fingerprint"]


def test_only_names_unknown_stages_clearly(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown stages 'bogus'"):
        pipeline.run(TINY, tmp_path / "x", only=["bogus"])
    with pytest.raises(ConfigError, match=r"'atribution' \(did you mean 'attribution'\?\)"):
        pipeline.run(TINY, tmp_path / "x", only=["atribution"])


@pytest.mark.parametrize("content", [b"\x00\x01\xff\xfe binary", b"[run\nseed = "])
def test_cli_gives_one_line_for_unreadable_configs(tmp_path, content):
    config = tmp_path / "c.toml"
    config.write_bytes(content)
    proc = subprocess.run([sys.executable, "-m", "chanstat.cli", "run", str(config), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "c.toml" in proc.stderr


def test_cli_out_is_a_file_or_read_only(tmp_path, capsys):
    target = tmp_path / "afile"
    target.write_text("x")
    assert main(["run", str(ROOT / "analyses" / "demo.toml"), "--out", str(target)]) == 2
    assert "is a file" in capsys.readouterr().err
