"""Where shards write, how a shard is committed, and the manifest that makes runs resumable.

Layout of one sharded stage (``root`` is ``<run dir>/shards/<stage>``)::

    plan.json               fingerprint + the shard plan of the current computation
    parts/<shard_id>/       committed outputs of one shard (Parquet tables, Zarr arrays, ...)
        _shard.json         the shard's record: indices, wall time, worker, attempt, info
    staging/<shard_id>-<token>/   a shard being computed (never read by anyone else)
    manifest.json           summary written by the client: done / failed shards, past runs

A shard computes into its own staging folder and is committed by renaming that folder to
``parts/<shard_id>`` (one atomic ``rename`` on a POSIX file system, also on NFS/Lustre within
one folder tree). So ``parts/`` only ever holds complete shards: a shard killed half-way
leaves a staging folder that the next run deletes and recomputes. The manifest is a summary
for humans and reports; the truth is which ``parts/<shard_id>/_shard.json`` exist.

When the fingerprint (stage config, model weights, data shape, plan) differs from the one in
``plan.json``, the previous parts are stale and the folder is cleared before computing.
"""

from __future__ import annotations

import os
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from chanstat.compute.plan import Shard
from chanstat.io import read_json, write_json

RECORD_FILE = "_shard.json"


class ShardStore:
    """The folder of one sharded computation (see the module docstring for its layout).

    Parameters
    ----------
    root : folder of this computation, e.g. ``<run dir>/shards/attribution``.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    # -- paths -----------------------------------------------------------------------------
    @property
    def parts(self) -> Path:
        return self.root / "parts"

    @property
    def staging(self) -> Path:
        return self.root / "staging"

    def part_dir(self, shard_id: str) -> Path:
        return self.parts / shard_id

    # -- plan and state --------------------------------------------------------------------
    def prepare(self, shards: Sequence[Shard], fingerprint: str) -> set[str]:
        """Start (or resume) a computation; return the ids of shards already committed.

        Clears everything when the stored fingerprint or plan differs from this one, and
        deletes leftover staging folders (shards that were interrupted).
        """
        plan = {"fingerprint": fingerprint, "shards": [s.to_dict() for s in shards]}
        previous = self.read_plan()
        if previous is not None and (
            previous.get("fingerprint") != fingerprint or previous.get("shards") != plan["shards"]
        ):
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        if previous is None or not (self.root / "plan.json").exists():
            write_json({**plan, "created": _now()}, self.root / "plan.json")
        self.clear_staging()
        self.parts.mkdir(exist_ok=True)
        wanted = {s.shard_id for s in shards}
        return {sid for sid in self.committed() if sid in wanted}

    def read_plan(self) -> dict | None:
        path = self.root / "plan.json"
        return read_json(path) if path.exists() else None

    def committed(self) -> list[str]:
        """Ids of committed shards (folders in ``parts/`` holding a record), sorted."""
        if not self.parts.exists():
            return []
        return sorted(p.name for p in self.parts.iterdir() if (p / RECORD_FILE).exists())

    def record(self, shard_id: str) -> dict:
        return read_json(self.part_dir(shard_id) / RECORD_FILE)

    def clear_staging(self) -> None:
        if self.staging.exists():
            shutil.rmtree(self.staging, ignore_errors=True)

    # -- one shard -------------------------------------------------------------------------
    def new_staging_dir(self, shard: Shard) -> Path:
        path = self.staging / f"{shard.shard_id}-{uuid.uuid4().hex[:8]}"
        path.mkdir(parents=True)
        return path

    def commit(self, shard: Shard, staging_dir: Path, record: dict[str, Any]) -> dict[str, Any]:
        """Write the shard's record into its staging folder, then rename it into ``parts/``.

        If another attempt committed the same shard first (a task re-run after its worker
        was lost), that commit stands and this staging folder is dropped.
        """
        record = {**record, "shard": shard.to_dict(), "committed": _now()}
        write_json(record, staging_dir / RECORD_FILE)
        target = self.part_dir(shard.shard_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists() and not (target / RECORD_FILE).exists():
            shutil.rmtree(target, ignore_errors=True)  # should not happen: commits are renames
        try:
            os.rename(staging_dir, target)
        except OSError:
            if (target / RECORD_FILE).exists():
                shutil.rmtree(staging_dir, ignore_errors=True)
                return self.record(shard.shard_id)
            raise
        return record

    # -- summary ---------------------------------------------------------------------------
    def write_manifest(self, report: dict[str, Any]) -> Path:
        """Append this run's report to ``manifest.json`` and refresh its done/failed lists."""
        path = self.root / "manifest.json"
        manifest = read_json(path) if path.exists() else {"runs": []}
        manifest["fingerprint"] = (self.read_plan() or {}).get("fingerprint")
        manifest["done"] = self.committed()
        manifest["failed"] = report.get("failed", {})
        manifest["runs"].append({**report, "finished": _now()})
        return write_json(manifest, path)

    def remove(self) -> None:
        """Delete the whole computation folder (after its parts were merged)."""
        shutil.rmtree(self.root, ignore_errors=True)
        parent = self.root.parent
        if parent.exists() and not any(parent.iterdir()):
            parent.rmdir()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()
