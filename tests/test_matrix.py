"""End to end, through the CLI: every counterfactual provider x data with and without objects x
every model kind, with every stage on, on tiny data (issue 23).

The factors come from the registries -- ``chanstat.counterfactual.PROVIDERS``, the pipeline's
stages, ``tests/model_kinds.MODEL_KINDS`` (plus chanstat's own trained VGG) -- so a new
provider, stage or model kind joins the matrix by itself. A provider needs one entry in
:data:`PROVIDER_OPTIONS` only when its defaults are too slow for tiny data.

The default suite runs a covering design: every (provider, data) pair, every model kind at
least once, the report rendered on a rotation (with and without objects); ``-m slow`` runs the full product. Each case
either finishes (``config --check`` passes, every table validates against the schema, the
report renders) or is refused by ``config --check`` with the same one-line error the run gives.
"""
from __future__ import annotations

import itertools
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tomli_w

from chanstat import pipeline
from chanstat.cli import main
from chanstat.counterfactual import PROVIDERS
from chanstat.rundir import RunDirectory
from chanstat.schema import SCHEMA, TableSpec

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from model_kinds import MODEL_KINDS  # noqa: E402

#: Options that keep a provider fast on tiny data (a provider not listed runs with its defaults).
PROVIDER_OPTIONS = {
    "optimise": {"max_steps": 3},
    "generator": {"steps": 2, "train_batch_size": 4, "n_latent": 1, "n_reference": 1,
                  "architecture": {"widths": [4, 8], "style_dim": 4, "latent_dim": 3, "n_bottleneck": 1, "mapping_width": 8}},
    "from_files": {"path": "counterfactuals.npy", "counterfactual_target": "counterfactual_target.npy"},
}
#: Sections that switch every optional stage on, small.
STAGE_SECTIONS = {
    "attribution": {"methods": ["saliency", "d_ixg", "residual", "random"]},
    "dac": {"steps": 6, "strategies": ["aggregate", "single_channel"], "sweep": {"enabled": False}},
    "decompose": {"interactions": False},
    "metrics": {"thresholds": 20, "faithfulness_images": 2, "steps": 3, "randomisation": {"enabled": False}},
    "stats": {"n_boot": 20, "tests": ["dominance"], "methods": ["d_ixg"]},
    "cellprofiler": {"n_perm": 0, "n_boot": 20, "link": {"enabled": False}},
    "report": {"formats": ["html"], "engine": "builtin"},
}
DATA_KINDS = ("objects", "no_objects")
SYNTHETIC = {"n_plates": 2, "wells_per_class": 2, "sites_per_well": 2, "size": 16, "seed": 0}
MODELS = ("trained", *sorted(MODEL_KINDS))


def all_cases() -> list[tuple[str, str, str]]:
    return list(itertools.product(sorted(PROVIDERS), DATA_KINDS, MODELS))


def covering_cases() -> list[tuple[str, str, str]]:
    """Every (provider, data) pair once, the model kinds taking turns (each at least once)."""
    pairs = list(itertools.product(sorted(PROVIDERS), DATA_KINDS))
    models = itertools.cycle(MODELS)
    cases = [(p, d, next(models)) for p, d in pairs]
    missing = [m for m in MODELS if m not in {c[2] for c in cases}]
    return cases + [(pairs[i % len(pairs)][0], "objects", m) for i, m in enumerate(missing)]


def test_the_matrix_covers_every_registered_factor():
    cases = covering_cases()
    assert {c[0] for c in cases} == set(PROVIDERS) and {c[2] for c in cases} == set(MODELS)
    assert {(c[0], c[1]) for c in cases} == set(itertools.product(PROVIDERS, DATA_KINDS))
    config = case_sections("oracle")
    assert all(pipeline.enabled(s, config) or s.always for s in pipeline.stages()), "every stage is on"


def case_sections(provider: str) -> dict:
    """Every optional stage on: its small section when it has one, else its defaults."""
    sections = {s.name: dict(STAGE_SECTIONS.get(s.name, {})) for s in pipeline.stages() if not s.always}
    sections["counterfactual"] = {"provider": provider, provider: PROVIDER_OPTIONS.get(provider, {})}
    return sections


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The tiny data set's arrays and counterfactual files, shared by every case."""
    import chanstat as cs

    folder = tmp_path_factory.mktemp("matrix_inputs")
    data = cs.synthetic(**SYNTHETIC)
    np.savez(folder / "images.npz", images=data.images.numpy(), labels=data.labels.numpy())
    np.save(folder / "counterfactuals.npy", data.counterfactuals.numpy())
    np.save(folder / "counterfactual_target.npy", data.counterfactual_target.numpy())
    shutil.copy(HERE / "model_kinds.py", folder / "model_kinds.py")
    return folder, data


def case_config(folder: Path, provider: str, data_kind: str, model: str, report: bool, n_channels: int) -> Path:
    """Write the config of one case into its own folder (inputs copied beside it)."""
    import torch

    case = folder / f"{provider}-{data_kind}-{model}"
    case.mkdir()
    for name in ("images.npz", "counterfactuals.npy", "counterfactual_target.npy", "model_kinds.py"):
        shutil.copy(folder / name, case / name)
    synthetic = {k: v for k, v in SYNTHETIC.items() if k != "seed"}
    labels = np.load(case / "images.npz")["labels"].tolist()
    data = {"synthetic": synthetic} if data_kind == "objects" else \
        {"source": "arrays", "arrays": {"path": "images.npz", "channels": ["DNA", "ER", "RNA", "AGP", "Mito"],
                                        "classes": ["control", "treated"], "labels": labels}}
    config: dict = {"run": {"seed": 0, "device": "cpu", "torch_threads": 1}, "data": data}
    if model == "trained":
        config["model"] = {"widths": [4], "epochs": 1, "min_epochs": 1, "batch_size": 8}
    elif model == "torchscript":
        torch.jit.save(MODEL_KINDS[model](n_channels, 2), str(case / "model.ts"))
        config["model"] = {"source": "model.ts"}
    else:
        config["model"] = {"source": f"model_kinds:{model}", "kwargs": {"in_channels": n_channels, "n_classes": 2}}
    config.update(case_sections(provider))
    if data_kind == "no_objects":  # localisation needs ground-truth masks, cp-measure objects (or a table)
        for name in ("metrics", "cellprofiler"):
            config[name] = {**config[name], "enabled": False}
    if not report:
        config["report"] = {**config["report"], "enabled": False}
    path = case / "config.toml"
    path.write_bytes(tomli_w.dumps(config).encode())
    return path


def run_case(inputs, tmp_path, capsys, provider, data_kind, model, report=True):
    folder, data = inputs
    work = tmp_path / "work"
    shutil.copytree(folder, work)
    config = case_config(work, provider, data_kind, model, report, len(data.channels))
    out = tmp_path / "run"
    check = main(["config", "--check", str(config)])
    check_err = capsys.readouterr().err.strip()
    if check != 0:  # refused up front: one line, and the run refuses with the same line
        assert check == 2 and len(check_err.splitlines()) == 1, check_err
        assert main(["run", str(config), "--out", str(out), "--no-progress"]) == 2
        assert capsys.readouterr().err.strip() == check_err
        assert not out.exists() or not any(out.iterdir())
        return None
    code = main(["run", str(config), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 0, err[-2000:]
    run = RunDirectory(out)
    written = [p.name for p in out.glob("*.parquet")]
    for name in written:
        spec = next(s for s in SCHEMA.values() if s.file == name)
        assert isinstance(spec, TableSpec)
        spec.validate(pd.read_parquet(out / name), name)
    for table in ("counterfactual_quality", "channel_mass", "channel_tests"):
        assert run.has(table), f"{table} missing"
    if report:
        assert (out / "report.html").stat().st_size > 10_000
    return run


EXPECTED_REFUSALS = {("oracle", "no_objects")}  # arrays carry no counterfactuals of their own


@pytest.mark.parametrize("case", covering_cases(), ids=lambda c: "-".join(c))
def test_covering_design_through_the_cli(inputs, tmp_path, capsys, case):
    provider, data_kind, model = case
    index = covering_cases().index(case)
    run = run_case(inputs, tmp_path, capsys, provider, data_kind, model, report=index % 5 == 0)
    assert (run is None) == ((provider, data_kind) in EXPECTED_REFUSALS)
    if run is not None and data_kind == "no_objects":  # the built-in segmentation stood in for the objects
        assert run.has("compartment_mass")


@pytest.mark.slow
@pytest.mark.parametrize("case", all_cases(), ids=lambda c: "-".join(c))
def test_full_product_through_the_cli(inputs, tmp_path, capsys, case):
    run = run_case(inputs, tmp_path, capsys, *case, report=True)
    assert (run is None) == ((case[0], case[1]) in EXPECTED_REFUSALS)
