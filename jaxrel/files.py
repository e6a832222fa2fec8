"""Files jaxrel writes: atomic writes, strict JSON, and the output checks every command runs
before it computes anything.

Nothing a user already has is lost:

* every file is written to a temporary file in its folder and renamed over the target
  (:func:`atomic_write`), so a run killed mid-write leaves the old file or the new one,
  never half of one;
* JSON is strict (RFC 8259): NaN and ±inf become ``null`` (:func:`jsonable`), never the
  ``NaN`` token that strict parsers reject;
* :func:`prepare_output` refuses an output that holds an earlier run unless the caller
  passes ``overwrite=True``, and then removes the earlier run's files (only the names the
  command writes), so no stale file of the old run (e.g. ``trajectory_r3.extxyz`` of a run
  with more replicas) survives beside the new one. It also checks that the output can be
  written, so a bad path fails before hours of computation, not after.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np


def key_label(key) -> str:
    """A dict key as a JSON/CSV label: a tuple such as (18, 36) → "18-36", anything else str()."""
    return "-".join(map(str, key)) if isinstance(key, tuple) else str(key)


def jsonable(value):
    """A result as strict-JSON-ready Python: NamedTuples → dicts, arrays → lists, tuple keys →
    "18-36", numpy scalars → Python numbers, NaN and ±inf → None (JSON null)."""
    if hasattr(value, "_asdict"):
        return jsonable(value._asdict())
    if isinstance(value, dict):
        return {key_label(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def atomic_write(path, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    A reader (or a run killed mid-write) sees the old file or the new one, never part of one.
    The folder must exist. Returns ``path`` as a Path.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path, value, indent: int = 2) -> Path:
    """Write ``value`` as strict JSON (non-finite floats as null), atomically. Returns the path."""
    text = json.dumps(jsonable(value), indent=indent, allow_nan=False, ensure_ascii=False)
    return atomic_write(path, text + "\n")


def savez(path, **arrays) -> Path:
    """``np.savez`` written atomically (the file keeps the name ``path``, with its .npz)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".npz")
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _writable_folder(folder: Path, what: str) -> None:
    """ValueError unless ``folder`` (or its nearest existing ancestor) is a writable folder."""
    probe = folder
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"{what} {folder} cannot be created: {probe} is a file, not a folder; "
                         "choose another path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {folder} cannot be written: {probe} is not writable; "
                         "choose a folder you can write to")


def prepare_output(out, produces: tuple[str, ...], *, overwrite: bool = False, option: str = "--out") -> Path:
    """Check an output folder before any computation; with ``overwrite``, clear the earlier run.

    Args:
        out: the output folder (created when missing).
        produces: names (glob patterns, e.g. ``"trajectory*.extxyz"``, ``"seed*"``) of the files
            and folders the command writes directly in ``out``; a folder holding any of them
            holds an earlier run.
        overwrite: remove those files and folders of the earlier run (nothing else in ``out``)
            instead of refusing, and say so on stderr.
        option: the command-line option named in messages.

    Returns:
        ``out`` as a Path, created and empty of earlier-run files.

    Raises:
        ValueError: ``out`` is a file; it cannot be created or written; or it holds an earlier
            run and ``overwrite`` is False (the message lists what would be lost).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{option} {out} is a file; give a folder (new, or one written by the same "
                         "command together with --overwrite)")
    _writable_folder(out, option)
    earlier = sorted(p for p in out.iterdir() if any(fnmatch.fnmatch(p.name, pattern) for pattern in produces)) \
        if out.is_dir() else []
    if earlier and not overwrite:
        names = ", ".join(p.name for p in earlier[:4]) + (", …" if len(earlier) > 4 else "")
        raise ValueError(f"{option} {out} already holds an earlier run ({names}); choose a new folder, "
                         "or pass --overwrite to replace it")
    if earlier:
        print(f"jaxrel: --overwrite: removing the earlier run's {', '.join(p.name for p in earlier)} from {out}",
              file=sys.stderr, flush=True)
    for p in earlier:
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def prepare_output_file(path, *, overwrite: bool = False, option: str = "--out", suffix: str | None = None) -> Path:
    """Check an output file before any computation.

    Raises:
        ValueError: ``path`` is a folder, lacks ``suffix``, cannot be written, or exists and
            ``overwrite`` is False.
    """
    path = Path(path)
    if suffix is not None and path.suffix != suffix:
        raise ValueError(f"{option} {path} must end in {suffix}; e.g. {path.with_suffix(suffix)}")
    if path.is_dir():
        raise ValueError(f"{option} {path} is a folder; give a file name, e.g. {path / ('data' + (suffix or ''))}")
    if path.exists() and not overwrite:
        raise ValueError(f"{option} {path} already exists; choose a new name, or pass --overwrite to replace it")
    _writable_folder(path.parent, f"the folder of {option}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
