"""Files chanstat ships inside the package: the report template and the example configs.

They are package data (read through :mod:`importlib.resources`), so an installed wheel runs
``chanstat demo`` and renders reports from any folder. In a source checkout they are links to
their one home, ``reports/`` and ``analyses/``.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

#: The report template (a Jupyter percent script that Quarto also renders).
REPORT_TEMPLATE = "chanstat_report.py"
#: Example configs, by name (``chanstat demo`` runs ``demo``).
CONFIGS = ("demo", "generator", "sharded")


def resource_path(name: str) -> Path:
    """The path of shipped file ``name`` (e.g. ``"demo.toml"``, ``"chanstat_report.py"``).

    Raises
    ------
    FileNotFoundError
        ``name`` is not shipped with this installation (the message lists what is).
    """
    entry = resources.files(__name__) / name
    if not entry.is_file():
        shipped = sorted(p.name for p in resources.files(__name__).iterdir() if not p.name.startswith("_"))
        raise FileNotFoundError(f"{name!r} is not shipped with chanstat; shipped: {shipped}")
    return Path(str(entry))


def config_path(name: str) -> Path:
    """The shipped example config ``name`` (one of :data:`CONFIGS`)."""
    if name not in CONFIGS:
        raise ValueError(f"unknown example config {name!r}; shipped: {list(CONFIGS)}")
    return resource_path(f"{name}.toml")
