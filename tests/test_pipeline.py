"""The pipeline, the stage contract, the run-directory schema and the package's shape."""
from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pandas as pd
import pytest

from chanstat import pipeline
from chanstat.rundir import RunDirectory
from chanstat.schema import BY_FILE, SCHEMA, SchemaError, TableSpec

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "chanstat"


def test_quick_run_writes_the_run_directory(quick_run):
    run = RunDirectory(quick_run)
    for name in ("config", "provenance", "model", "dataset", "meta", "training_history", "marker", "report_html"):
        assert run.has(name), name
    prov = run.provenance
    assert prov["seed"] == 0 and prov["quick"] is True
    assert prov["versions"]["torch"].startswith("2.13.0")
    assert prov["device"]["device"] in ("cpu", "cuda")
    assert all(stage["status"] == "done" and stage["wall_s"] >= 0 and len(stage["fingerprint"]) == 16
               for stage in prov["stages"].values())
    assert prov["stages"]["model"]["val_accuracy"] >= 0.8
    assert run.n_images() == len(run.table("meta")) == prov["stages"]["data"]["n_images"]
    config = tomllib.loads((quick_run / "config.toml").read_text())
    assert config["data"]["synthetic"]["size"] == 48  # the [quick] table was merged
    assert config["dac"]["schedule"] == "adaptive"  # defaults are filled in and recorded


def test_every_table_of_the_quick_demo_validates_against_the_schema(quick_run):
    written = sorted(p.name for p in quick_run.glob("*.parquet"))
    assert len(written) >= 20
    for name in written:
        assert name in BY_FILE, f"{name} is written but not declared in chanstat/schema.py"
        spec = BY_FILE[name]
        assert isinstance(spec, TableSpec)
        spec.validate(pd.read_parquet(quick_run / name), name)
    prov = json.loads((quick_run / "provenance.json").read_text())
    for stage, record in prov["stages"].items():
        for output in record.get("outputs", []):
            assert SCHEMA[output].stage == stage or output in ("dataset", "meta"), (stage, output)


def test_the_schema_refuses_a_table_that_does_not_match(tmp_path):
    run = RunDirectory(tmp_path / "run", create=True)
    good = pd.DataFrame({"sample": [0], "method": ["d_ig"], "strategy": ["joint"], "channel": ["all"], "dac": [0.5]})
    run.write_table("dac_scores", good)
    pd.testing.assert_frame_equal(run.table("dac_scores"), good)
    with pytest.raises(SchemaError, match=r"dac_scores.parquet: missing column 'dac'"):
        run.write_table("dac_scores", good.drop(columns="dac"))
    with pytest.raises(SchemaError, match=r"column 'sample' should be int"):
        run.write_table("dac_scores", good.assign(sample=["a"]))
    with pytest.raises(SchemaError, match=r"undeclared columns \['surprise'\]"):
        run.write_table("dac_scores", good.assign(surprise=1))
    with pytest.raises(KeyError, match="did you mean 'dac_scores'"):
        run.write_table("dac_score", good)


def test_save_then_render_works_for_a_python_analysis(tmp_path):
    run = RunDirectory(tmp_path / "mine", create=True)
    mass = pd.DataFrame({"sample": [0, 0, 1, 1], "method": "d_ig", "channel": ["DNA", "Mito"] * 2,
                         "mass": [1.0, 3.0, 1.0, 2.0], "share": [0.25, 0.75, 1 / 3, 2 / 3],
                         "Metadata_Plate": "P", "Metadata_Well": ["A01", "A01", "A02", "A02"]})
    run.save(channel_mass=mass)
    assert run.table("channel_mass").equals(mass)
    with pytest.raises(KeyError, match="did you mean 'channel_mass'"):
        run.save(channel_mas=mass)


def _imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return found


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_import_cycle_in_the_package_even_inside_functions():
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph = {m: sorted({i for i in _imports(p) if i in modules and i != m}) for m, p in modules.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in graph[m]:
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def _subpackage(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2])


def _package_graph() -> dict[str, set[str]]:
    # chanstat/resources holds the report template (package data that is run, never imported)
    modules = {_module(p): p for p in PACKAGE.rglob("*.py") if "resources" not in p.relative_to(PACKAGE).parts[:1]}
    graph: dict[str, set[str]] = {}
    for m, p in modules.items():
        for i in _imports(p):
            if i in modules and _subpackage(i) != _subpackage(m):
                graph.setdefault(_subpackage(m), set()).add(_subpackage(i))
    return graph


def _reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for n in graph.get(todo.pop(), ()):
            if n not in seen:
                seen.add(n)
                todo.append(n)
    return seen


#: Arrows that still run back up, each being removed by its owner (issue 22); none may be added.
def test_no_import_cycle_between_subpackages():
    """Arrows between subpackages (and top-level modules) run one way, even inside functions."""
    graph = _package_graph()
    cycles = sorted(m for m in graph if m in _reaches(graph, m))
    assert not cycles, {m: sorted(n for n in graph[m] if m in _reaches(graph, n) or n == m) for m in cycles}


def test_import_floors():
    """compute runs any task (no stage, no pipeline); rundir knows neither models nor data; config no compute."""
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    stage_modules = {ref.partition(":")[0] for ref in pipeline.STAGE_REFS}

    def imports_of(prefix: str) -> set[str]:
        return {i for m, p in modules.items() if m == prefix or m.startswith(prefix + ".") for i in _imports(p)}

    compute = imports_of("chanstat.compute")
    assert not compute & (stage_modules | {"chanstat.pipeline"}), sorted(compute & stage_modules)
    rundir = {i for i in imports_of("chanstat.rundir") | imports_of("chanstat.rundir_save")}
    assert not any(i.startswith(("chanstat.models", "chanstat.data")) for i in rundir), sorted(rundir)
    assert not any(i.startswith("chanstat.compute") for i in imports_of("chanstat.config"))


def test_no_module_is_longer_than_600_lines():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 600}
    assert not long, long


@pytest.mark.parametrize("module", ["chanstat.stats", "chanstat.cellprofiler", "chanstat.report", "chanstat.schema",
                                    "chanstat.stage", "chanstat.rundir", "chanstat.io",
                                    "chanstat.objects", "chanstat.decompose.compartments", "chanstat.answer",
                                    "chanstat.vocabulary", "chanstat.dacscore.result", "chanstat.resources"])
def test_torch_free_parts_import_without_torch(module):
    code = f"import sys, {module}; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_every_stage_declares_its_outputs_in_the_schema():
    names = [s.name for s in pipeline.stages()]
    assert names == ["data", "model", "counterfactual", "attribution", "dac", "decompose", "metrics", "stats",
                     "cellprofiler", "answer", "report"]
    for stage in pipeline.stages():
        for output in stage.writes:
            assert SCHEMA[output].stage == stage.name or output in ("dataset", "meta"), (stage.name, output)


def test_readme_config_schema_is_the_generated_one():
    from chanstat.cli import readme_block
    from chanstat.config import schema_markdown

    assert readme_block((ROOT / "README.md").read_text()) == schema_markdown(pipeline.stages()), (
        "README's config schema is stale: run `chanstat config --readme README.md`")


def test_readme_python_example_runs_as_written(tmp_path):
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- example:start -->", 1)[1].split("<!-- example:end -->", 1)[0]
    code = re.search(r"```python\n(.*?)```", block, re.S).group(1)
    script = tmp_path / "example.py"
    script.write_text(code)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=1200, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = tmp_path / "runs" / "example" / "report.html"
    assert report.is_file() and report.stat().st_size > 10_000
    assert "Mito" in proc.stdout
