"""Atomic outputs: a run either leaves a complete folder/file behind or nothing at all.

Results are written into a hidden temporary sibling of the target and renamed into place at the very end, so an
error, a Ctrl-C or a crash never leaves a half-written ``--out`` folder that looks like a finished run.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from brevitas_ldm.errors import BrevitasLDMError


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse to clobber a non-empty folder unless asked to (checked before any work starts)."""
    if out.exists() and not out.is_dir():
        raise BrevitasLDMError(f"--out {str(out)!r} is a file: pass a folder path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise BrevitasLDMError(f"--out {str(out)!r} exists and is not empty: choose a new folder or pass --overwrite")


@contextmanager
def atomic_output_dir(out: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``out``; on any exception it is deleted."""
    out = Path(out)
    check_output_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield staging
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            out.rename(trash / out.name)
            staging.rename(out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write a file via a temporary sibling and ``os.replace`` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be read by others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json_file(path: str | Path, filename: str, what: str, missing: str, invalid: str,
                   error: type[Exception] = BrevitasLDMError) -> tuple[Path, Any]:
    """Read ``path`` (a JSON file, or the folder holding ``filename``) as JSON.

    ``what`` names the file for people ("plan"); ``missing`` and ``invalid`` are the fixes the errors name (``error`` is raised, one line, no
    traceback chaining); returns the resolved file path and the parsed data.
    """
    path = Path(path)
    if path.is_dir():
        path = path / filename
    if not path.is_file():
        raise error(f"no {what} at {path}: {missing}")
    try:
        return path, json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise error(f"{path} is not valid JSON ({exc}): {invalid}") from None


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float):
        return value
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
