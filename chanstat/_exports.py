"""Lazy exports for the subpackages whose modules must load without torch (PEP 562).

``cellprofiler``, ``dac`` and ``decompose`` hold torch-free modules next to torch ones; their
``__init__`` names what it exports and where, and a name's module is imported on first use, so
``import chanstat.dacscore.result`` never imports torch. Every other subpackage imports eagerly.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping


def lazy(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` exporting ``name -> submodule`` (relative names)."""
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
