"""Adapter versions on disk and in the adapter_versions table.

Layout: `adapters_dir/<user_name>/<version>/` holds a plain PEFT `save_pretrained` directory
(adapter_config.json + adapter_model.safetensors, loadable with
`PeftModel.from_pretrained(base, dir)` without this project) plus `meta.json`.

A version is written into a hidden temp dir next to its final place and renamed into place
in one `os.rename`, then its row is inserted; if the insert fails the directory is removed
again. A crash therefore never leaves a half-written version: at worst a `.tmp-*` dir (swept
later) or a complete directory without a row, whose number is then skipped, never reused.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from feedback_store.clock import now
from feedback_store.errors import NotFound, TrainingError
from feedback_store.sql import Database
from feedback_store.users import check_name, get_user, set_current_version

TMP_PREFIX = ".tmp-"
STALE_TMP_SECONDS = 3600


def user_dir(adapters_dir: Path, user_name: str) -> Path:
    return Path(adapters_dir) / check_name(user_name)


def _next_version(db: Database, folder: Path, user_id: int) -> int:
    """One above every version in the table or on disk (an orphan's number is not reused)."""
    row = next(db.query("select max(version) as v from adapter_versions where user_id = ?",
                        [user_id]))
    on_disk = [int(p.name) for p in folder.iterdir() if p.name.isdigit()] if folder.exists() \
        else []
    return max([row["v"] or 0, *on_disk]) + 1


def _sweep_stale_tmp(folder: Path) -> None:
    """Remove temp dirs left by a crashed writer (old ones only: a live writer may exist)."""
    if not folder.exists():
        return
    for path in folder.glob(TMP_PREFIX + "*"):
        if time.time() - path.stat().st_mtime > STALE_TMP_SECONDS:
            shutil.rmtree(path, ignore_errors=True)


def _commit_version(db: Database, adapters_dir: Path, user: dict,
                    write: Callable[[Path], None], meta: dict) -> int:
    """Write a version with write(tmp_dir), rename it into place, then insert its row."""
    # Looked up first: a user erased while their run trained gets no folder recreated.
    parent = get_user(db, user["id"])["current_version"]
    folder = user_dir(adapters_dir, user["name"])
    folder.mkdir(parents=True, exist_ok=True)
    _sweep_stale_tmp(folder)
    version = _next_version(db, folder, user["id"])
    full_meta = {**meta, "user": {"id": user["id"], "name": user["name"]},
                 "version": version, "parent_version": parent, "saved_at": now()}
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=f"{TMP_PREFIX}{version}-"))
    final = folder / str(version)
    try:
        write(tmp)
        if not (tmp / "adapter_config.json").exists():
            raise TrainingError("the adapter directory has no adapter_config.json")
        (tmp / "meta.json").write_text(json.dumps(full_meta, indent=1, default=str))
        os.rename(tmp, final)
    except TrainingError:
        raise
    except Exception as exc:
        raise TrainingError(f"could not save adapter version {version}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    try:
        _insert_row(db, user["id"], version, parent, final, full_meta)
    except Exception as exc:
        shutil.rmtree(final, ignore_errors=True)
        raise TrainingError(f"could not register adapter version {version}: {exc}") from exc
    return version


def _insert_row(db: Database, user_id: int, version: int, parent: int | None, path: Path,
                meta: dict) -> None:
    db.table("adapter_versions").insert({
        "user_id": user_id, "version": version, "parent_version": parent,
        "path": str(path.resolve()), "base_id": meta.get("base_id"),
        "metrics": json.dumps(meta.get("metrics", {}), default=str), "created_at": now()})


def save_version(db: Database, adapters_dir: Path, user: dict, peft_model, meta: dict,
                 adapter_name: str = "default") -> int:
    """Save the model's adapter `adapter_name` as the user's next version; return its number.

    meta (base_id, feedback counts, training config, metrics, timings...) goes to meta.json,
    with user, version and parent_version (the user's current version) added; meta["metrics"]
    also goes to the row. The version is not promoted.
    """
    def write(tmp: Path) -> None:
        peft_model.save_pretrained(str(tmp), selected_adapters=[adapter_name])
        if adapter_name != "default":          # PEFT puts non-default adapters in a subdir
            for item in (tmp / adapter_name).iterdir():
                item.rename(tmp / item.name)
            (tmp / adapter_name).rmdir()

    return _commit_version(db, adapters_dir, user, write, meta)


def find_version(db: Database, user_id: int, version: int | None) -> dict | None:
    """The user's row for `version` as stored (metrics still JSON), or None."""
    if version is None:
        return None
    rows = list(db["adapter_versions"].rows_where("user_id = ? and version = ?",
                                                  [user_id, version]))   # no cursor left open
    return rows[0] if rows else None


def get_version(db: Database, user_id: int, version: int) -> dict:
    row = find_version(db, user_id, version)
    if row is None:
        raise NotFound(f"user {user_id} has no adapter version {version}")
    return {**row, "metrics": json.loads(row["metrics"] or "{}")}


def version_rows(db: Database, user_id: int) -> list[dict]:
    """The user's rows as stored, oldest first (the data export)."""
    return list(db["adapter_versions"].rows_where("user_id = ?", [user_id], order_by="version"))


def earlier_rows(db: Database, user_id: int, version: int) -> list[dict]:
    """The user's rows older than `version`, newest first."""
    return list(db["adapter_versions"].rows_where("user_id = ? and version < ?",
                                                  [user_id, version], order_by="version desc"))


def recorded_paths(db: Database, user_id: int) -> list[str]:
    """Every non-empty path recorded for the user's versions (erasure removes them)."""
    return [r["path"] for r in db["adapter_versions"].rows_where(
        "user_id = ? and path is not null and path != ''", [user_id])]


def serving_peers(db: Database, user_id: int) -> list[dict]:
    """user_id, version and path of the version serving every other user who has one."""
    return list(db.query(
        "select v.user_id, v.version, v.path from users u join adapter_versions v "
        "on v.user_id = u.id and v.version = u.current_version where u.id != ? "
        "order by u.id", [user_id]))


def list_versions(db: Database, user_id: int) -> list[dict]:
    """The user's versions, oldest first, metrics decoded, the serving one marked current."""
    current = get_user(db, user_id)["current_version"]
    return [{**r, "metrics": json.loads(r["metrics"] or "{}"), "current": r["version"] == current}
            for r in version_rows(db, user_id)]


def promote(db: Database, user_id: int, version: int) -> None:
    """Serve `version` to the user from now on (it must be one of theirs)."""
    get_version(db, user_id, version)
    set_current_version(db, user_id, version)


def rollback(db: Database, user_id: int, version: int) -> None:
    """Go back to an earlier (or any other) version of the user's: NotFound if there is none."""
    promote(db, user_id, version)


def current_path(db: Database, user: dict) -> Path | None:
    """Directory of the version serving the user now, or None (the base serves them)."""
    version = get_user(db, user["id"])["current_version"]
    return Path(get_version(db, user["id"], version)["path"]) if version else None


def version_meta(path: Path | None) -> dict:
    """The meta.json saved with a version ({} for the base, None)."""
    if path is None:
        return {}
    try:
        return json.loads((Path(path) / "meta.json").read_text())
    except (OSError, ValueError) as exc:
        raise TrainingError(f"cannot read the meta.json of {path}: {exc}") from exc
