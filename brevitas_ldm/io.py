"""Files in and out: atomic outputs, and the one JSON codec every result file uses.

A run either leaves a complete folder/file behind or nothing at all: results are written into a hidden temporary
sibling of the target and renamed into place at the very end, so an error, a Ctrl-C or a crash never leaves a
half-written ``--out`` folder that looks like a finished run. A command claims its ``--out`` before any work
(:func:`claimed_output_dir`): the folder must be writable, and a second run into the same folder at the same time
is refused; the final rename also refuses to replace a folder another run finished meanwhile.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from brevitas_ldm.errors import BrevitasLDMError
from brevitas_ldm.precision import Precision

T = TypeVar("T")


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
        os.chmod(staging, 0o777 & ~_umask())    # mkdtemp makes 0700; a result folder gets the user's normal mode
        if out.exists() and overwrite:
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            out.rename(trash / out.name)
            _commit(staging, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            _commit(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _commit(staging: Path, out: Path) -> None:
    """Rename ``staging`` onto ``out``; the kernel refuses when another run filled ``out`` meanwhile."""
    try:
        os.rename(staging, out)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise BrevitasLDMError(f"--out {str(out)!r} was written by another run while this one worked; this run's "
                                   f"result was discarded and the other's kept: choose another --out") from None
        raise


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


@contextmanager
def claimed_output_dir(out: Path, overwrite: bool) -> Iterator[None]:
    """Hold ``out`` for this run: refuse it up front when it is taken, cannot be written, or is being written by
    another run right now (an advisory lock beside it, released when the run ends, however it ends)."""
    out = Path(out)
    check_output_dir(out, overwrite)
    ancestor = _existing_ancestor(out.parent)
    if not ancestor.is_dir():
        raise BrevitasLDMError(f"--out {str(out)!r} lies under {str(ancestor)!r}, which is a file: pass a folder path")
    try:   # an actual write: permission bits alone say nothing for root or read-only mounts
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as exc:
        raise BrevitasLDMError(f"--out {str(out)!r} cannot be written ({exc.strerror} in {str(ancestor)!r}): choose "
                               f"a folder you can write to") from None
    if ancestor != out.parent.absolute():       # the parent does not exist yet: nothing to lock beside
        yield
        return
    lock_path = out.parent / f".{out.name}.lock"
    handle = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o666 & ~_umask())
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(handle)
        raise BrevitasLDMError(f"another brevitas-ldm run is writing --out {str(out)!r} now: wait for it to finish "
                               f"or choose another --out") from None
    try:
        yield
    finally:
        try:
            os.unlink(lock_path)
        except OSError:
            pass
        os.close(handle)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def give_user_mode(path: Path) -> None:
    """Give a result file the mode a plain ``open()`` would (0666 minus the umask): temporary-file helpers and some
    writers (mkstemp, safetensors) create 0600, and results are meant to be read by others."""
    os.chmod(path, 0o666 & ~_umask())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write a file via a temporary sibling and ``os.replace`` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        give_user_mode(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 4 MiB chunks (checkpoint files, LoRA files)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
    if isinstance(value, Precision):      # typed inside, a string at the edge
        return value.name
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float):
        return value
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# -- the one JSON codec for non-finite floats --------------------------------------------------------------------

#: JSON has no infinity or NaN; the project's files write them as these strings (+inf SQNR means "no noise",
#: NaN "not measured"), and read them back as the same floats.
_NON_FINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def encode_json_floats(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by ``"inf"``/``"-inf"``/``"nan"`` (tuples become lists)."""
    if isinstance(obj, dict):
        return {key: encode_json_floats(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [encode_json_floats(value) for value in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


def decode_json_float(value: Any) -> float:
    """One number written by :func:`encode_json_floats` (``null``, from files before the codec, reads as NaN)."""
    if value is None:
        return math.nan
    if isinstance(value, str):
        if value not in _NON_FINITE:
            raise ValueError(f"{value!r} is not a number")
        return _NON_FINITE[value]
    return float(value)


def decode_json_floats(obj: Any) -> Any:
    """A numeric subtree (numbers, lists and dicts of them) written by :func:`encode_json_floats`."""
    if isinstance(obj, dict):
        return {key: decode_json_floats(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [decode_json_floats(value) for value in obj]
    return decode_json_float(obj)


def dataclass_from_dict(cls: type[T], data: Mapping[str, Any], what: str, derived: tuple[str, ...] = (),
                        error: type[Exception] = BrevitasLDMError) -> T:
    """``cls(**data)`` with the project's one unknown-key policy: keys in ``derived`` (written for readers,
    recomputed on load) are dropped, any other unknown key is an error that names it."""
    if not isinstance(data, Mapping):
        raise error(f"{what} is a {type(data).__name__}, not a JSON object: pass the file brevitas-ldm wrote")
    known = {f.name for f in dataclasses.fields(cls)}
    values = {key: value for key, value in data.items() if key not in derived}
    unknown = sorted(set(values) - known)
    if unknown:
        raise error(f"{what} has unknown keys {', '.join(unknown)}; known keys: {', '.join(sorted(known))}: it was "
                    f"written by another version or edited by hand; rewrite it")
    return cls(**values)
