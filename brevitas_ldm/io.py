"""Files in and out: atomic outputs, and the one JSON codec every result file uses.

A run either leaves a complete folder/file behind or nothing at all: results are written into a hidden temporary
sibling of the target and renamed into place at the very end, so an error, a Ctrl-C or a crash never leaves a
half-written ``--out`` folder that looks like a finished run. A command claims its ``--out`` before any work
(:func:`claimed_output_dir`): the folder must be writable, and a second run into the same folder at the same time
is refused; the final rename also refuses to replace a folder another run finished meanwhile. An output never
overlaps an input (:func:`check_apart`: not the same path, not inside it, not around it, links resolved), so no
``--overwrite`` can delete what the run reads. Files from elsewhere are checked before they are trusted: a
safetensors file by its header against its size (:func:`check_safetensors_file`), JSON by one reader that names
the file for any decoding problem.
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
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from brevitas_ldm.errors import BrevitasLDMError
from brevitas_ldm.precision import Precision
from brevitas_ldm.process.interruption import raise_if_interrupted

T = TypeVar("T")


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse to clobber a non-empty folder unless asked to (checked before any work starts)."""
    check_path_length(out, "--out", staging=True)
    if out.is_symlink():
        # The final rename would replace the link, not fill its target: say so now, not "written by another run"
        # after the work.
        raise BrevitasLDMError(f"--out {str(out)!r} is a symbolic link (to {os.readlink(out)!r}): pass the folder it "
                               f"points to, or a path that is not a link")
    if out.exists() and not out.is_dir():
        raise BrevitasLDMError(f"--out {str(out)!r} is a file: pass a folder path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise BrevitasLDMError(f"--out {str(out)!r} exists and is not empty: choose a new folder or pass --overwrite")


#: Longest file name (bytes) Linux file systems take, and the longest path; the staging and lock names that
#: :func:`atomic_output_dir` and :func:`claimed_output_dir` put beside ``--out`` add this many bytes to its name.
NAME_MAX, PATH_MAX, STAGING_EXTRA = 255, 4096, len(".") + len(".partial-") + 8


def check_path_length(path: Path, flag: str, staging: bool = False) -> None:
    """Refuse a path whose names the file system cannot hold, before anything touches it (``os.stat`` of such a
    path raises, it does not answer "missing"). ``staging``: the last name also gets a staging sibling."""
    path = Path(path)
    parts = path.parts
    for index, part in enumerate(parts):
        size = len(os.fsencode(part))
        if size > NAME_MAX:
            raise BrevitasLDMError(f"{flag}: the name {part[:40]!r}... is {size} bytes, more than the {NAME_MAX} a "
                                   f"file system takes: choose a shorter name")
        if staging and index == len(parts) - 1 and size > NAME_MAX - STAGING_EXTRA:
            raise BrevitasLDMError(f"{flag}: the name {part[:40]!r}... is {size} bytes, and its staging folder beside "
                                   f"it adds {STAGING_EXTRA} to the {NAME_MAX} a file system takes: choose a name of "
                                   f"at most {NAME_MAX - STAGING_EXTRA} bytes")
    if len(os.fsencode(str(path.absolute()))) + (STAGING_EXTRA if staging else 0) > PATH_MAX:
        raise BrevitasLDMError(f"{flag} {str(path)[:40]!r}... is longer than the {PATH_MAX} bytes a path may have: "
                               f"choose a shorter path")


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(Path(path).expanduser()))


def check_apart(target: Path, flag: str, inputs: Mapping[str, Path], holders: Mapping[str, Path] | None = None) -> None:
    """Refuse an output path (``flag``: ``--out``, ``--cache-dir``) that is, lies inside or contains one of
    ``inputs`` (flag -> file or folder the run reads), or that is or contains one of ``holders`` (folders an output
    may lie inside but never replace: the current directory). Symbolic links are followed, so a link cannot hide
    an overlap. Checked before any work, with or without ``--overwrite``: an output that replaces its own input
    destroys it, one inside it changes it."""
    mine = _resolved(target)
    cases = [(name, path, True) for name, path in inputs.items()]
    cases += [(name, path, False) for name, path in (holders or {}).items()]
    for name, path, exclusive in cases:
        theirs = _resolved(path)
        if mine == theirs:
            relation = "is"
        elif theirs in mine.parents and exclusive:
            relation = "lies inside"
        elif mine in theirs.parents:
            relation = "contains"
        else:
            continue
        what = name if name.startswith("the ") else f"the {name} input"
        shown = "" if str(path) == str(theirs) else f" ({theirs})"
        why = " (--overwrite would delete it)" if flag == "--out" else ""
        raise BrevitasLDMError(f"{flag} {str(target)!r} {relation} {what} {str(path)!r}{shown}: a run never writes "
                               f"over, into or around what it reads{why}; choose {flag} outside it")


def _current_directory() -> dict[str, Path]:
    return {"the current directory": Path.cwd()}


def check_cache_dir(cache: Path, inputs: Mapping[str, Path], out: Path | None = None) -> None:
    """``--cache-dir``, checked before any work: a folder (or a path one can be made at) that can be written, apart
    from every input and neither ``--out`` nor inside it (the result folder is replaced as a whole)."""
    cache = Path(cache)
    check_path_length(cache, "--cache-dir")
    check_apart(cache, "--cache-dir", {**inputs, **({"the --out folder": out} if out is not None else {})},
                _current_directory())
    if cache.exists() and not cache.is_dir():
        raise BrevitasLDMError(f"--cache-dir {str(cache)!r} is a file: pass a folder path (it is created if missing)")
    ancestor = _existing_ancestor(cache)
    if not ancestor.is_dir():
        raise BrevitasLDMError(f"--cache-dir {str(cache)!r} lies under {str(ancestor)!r}, which is a file: pass a "
                               f"folder path")
    _check_writable(ancestor, cache, "--cache-dir")


def _check_writable(folder: Path, target: Path, flag: str) -> None:
    try:   # an actual write: permission bits alone say nothing for root or read-only mounts
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise BrevitasLDMError(f"{flag} {str(target)!r} cannot be written ({exc.strerror} in {str(folder)!r}): "
                               f"choose a folder you can write to") from None


@contextmanager
def atomic_output_dir(out: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``out``; on any exception it is deleted."""
    out = Path(out)
    check_output_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield staging
        raise_if_interrupted()      # never commit a run whose signal was swallowed on the way
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
def claimed_output_dir(out: Path, overwrite: bool, inputs: Mapping[str, Path] | None = None) -> Iterator[None]:
    """Hold ``out`` for this run: refuse it up front when it overlaps an input (``inputs``: flag -> path, and the
    current directory; :func:`check_apart`), is taken, cannot be written, or is being written by another run right
    now (an advisory lock beside it, released when the run ends, however it ends)."""
    out = Path(out)
    check_path_length(out, "--out", staging=True)
    check_apart(out, "--out", inputs or {}, _current_directory())
    check_output_dir(out, overwrite)
    ancestor = _existing_ancestor(out.parent)
    if not ancestor.is_dir():
        raise BrevitasLDMError(f"--out {str(out)!r} lies under {str(ancestor)!r}, which is a file: pass a folder path")
    _check_writable(ancestor, out, "--out")
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


@contextmanager
def atomic_file_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` for a writer that takes a path (Brevitas' exporters, OpenVINO's
    ``save_model``); it is renamed onto ``path`` (atomic on POSIX) when the block succeeds, deleted otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        give_user_mode(tmp_path)
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write a file via a temporary sibling and ``os.replace`` (atomic on POSIX)."""
    with atomic_file_path(path) as tmp:
        tmp.write_bytes(data)


def write_safetensors_atomic(path: Path, tensors: Mapping[str, Any], metadata: Mapping[str, str]) -> None:
    """Write a safetensors file atomically and byte-for-byte the same for the same tensors and metadata.

    The safetensors library writes its ``__metadata__`` map in a per-process hash order, so the same model saved
    by two runs (or by two ranks' jobs) gave two files with different SHA-256s although every tensor is equal.
    The header is written here with the metadata keys sorted (same length, so the data offsets stand)."""
    from safetensors.torch import save

    data = save(dict(tensors), metadata=dict(metadata))
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode()
    if len(text) > size:
        raise BrevitasLDMError(f"{path}: the safetensors header could not be normalised (report this as a bug)")
    write_bytes_atomic(path, data[:8] + text.ljust(size, b" ") + data[8 + size:])


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 4 MiB chunks (checkpoint files, LoRA files)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


#: Bytes per element of the safetensors dtypes (sub-byte and newer dtypes are bounds-checked only).
SAFETENSORS_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2, "U16": 2,
                           "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8}
#: The largest header the safetensors library itself reads (its ``HeaderTooLarge`` limit).
SAFETENSORS_MAX_HEADER = 100_000_000


def check_safetensors_file(path: Path, fix: str = "restore the file or write it again",
                           error: type[Exception] = BrevitasLDMError) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Refuse, in one line naming ``path``, a file that is not a well-formed safetensors file, by reading only its
    header against the file's size: the header length, its JSON, and every tensor's dtype, shape and byte range.
    Nothing is allocated for the tensors, so a file whose header claims terabytes or points outside the file (a
    hand-made or damaged file whose hash was updated too, a pickle renamed to ``.safetensors``) is refused
    instead of ending in the library's error or an allocation failure. Returns name -> (dtype, shape).
    """
    path = Path(path)

    def refuse(reason: str) -> Exception:
        return error(f"{path} is not a valid safetensors file ({reason}): {fix}")

    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise refuse(f"{size} bytes, shorter than the 8-byte header length")
            length = int.from_bytes(head, "little")
            if length > min(size - 8, SAFETENSORS_MAX_HEADER):
                raise refuse(f"its header claims {length:,} bytes in a file of {size:,}")
            raw = handle.read(length)
    except OSError as exc:
        raise error(f"{path} cannot be read ({exc.strerror}): {fix}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise refuse("its header is not JSON") from None
    if not isinstance(header, dict):
        raise refuse("its header is not a JSON object")
    buffer = size - 8 - length
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise refuse(f"tensor {name!r} has no description")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str) or not isinstance(shape, list) or not isinstance(offsets, list) \
                or len(offsets) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                                for v in [*shape, *offsets]):
            raise refuse(f"tensor {name!r} has no valid dtype, shape and data_offsets")
        begin, end = offsets
        if not begin <= end <= buffer:
            raise refuse(f"tensor {name!r} lies at bytes {begin:,}..{end:,} of a {buffer:,}-byte data section")
        if dtype in SAFETENSORS_DTYPE_BYTES:
            expected = math.prod(shape) * SAFETENSORS_DTYPE_BYTES[dtype]
            if expected != end - begin:
                raise refuse(f"tensor {name!r} of shape {shape} {dtype} needs {expected:,} bytes, its range holds "
                             f"{end - begin:,}")
        tensors[name] = (dtype, tuple(shape))
    return tensors


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json_file(path: str | Path, filename: str, what: str, missing: str, invalid: str,
                   error: type[Exception] = BrevitasLDMError) -> tuple[Path, Any]:
    """Read ``path`` (a JSON file, or the folder holding ``filename``) as JSON.

    ``what`` names the file for people ("plan"); ``missing`` and ``invalid`` are the fixes the errors name (``error`` is
    raised, one line, no traceback chaining); returns the resolved file path and the parsed data.
    """
    path = Path(path)
    if path.is_dir():
        path = path / filename
    if not path.is_file():
        raise error(f"no {what} at {path}: {missing}")
    try:
        return path, json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise error(f"{path} is not UTF-8 text (byte {exc.start} cannot be decoded): {invalid}") from None
    except json.JSONDecodeError as exc:
        raise error(f"{path} is not valid JSON ({exc}): {invalid}") from None
    except RecursionError:
        raise error(f"{path} nests its JSON too deeply to read: {invalid}") from None


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
    values = {key: value for key, value in data.items() if key not in derived}
    check_known_keys(values, {f.name for f in dataclasses.fields(cls)}, what, error)
    return cls(**values)


def check_known_keys(data: Mapping[str, Any], known: Iterable[str], what: str,
                     error: type[Exception] = BrevitasLDMError) -> None:
    """The project's one unknown-key policy for the files it reads back: a key it does not know is an error that
    names it (a misspelt or foreign key silently ignored would describe another model than the one loaded)."""
    known = set(known)
    unknown = sorted(set(data) - known)
    if unknown:
        raise error(f"{what} has unknown keys {', '.join(unknown)}; known keys: {', '.join(sorted(known))}: it was "
                    f"written by another version or edited by hand; rewrite it")
