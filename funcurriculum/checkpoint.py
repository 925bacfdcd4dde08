"""Code-free, atomic checkpoints of pytrees (tensors, numbers, strings, curricula, states).

Format: ``torch.save`` of plain containers only (dict, list, tuple, str, int, float,
bool, None, tensors); a ``Curriculum`` is stored as a tagged dict of plain data.
Loading uses ``torch.load(weights_only=True)``, whose unpickler admits only those
types, so a file can never run code. Writes go to a temporary file in the target's
directory, are fsynced, then renamed over the target (``os.replace`` is atomic on
POSIX and Windows): a crash leaves either the old file or the new one.

Rotation: a path *pattern* such as ``"ckpt/step{step:08d}.pt"`` names one file per
step; :func:`checkpoint_files` lists the files a pattern matches (oldest first),
:func:`latest_checkpoint` returns the newest and :func:`rotate` deletes all but the
newest ``keep_last``.
"""

from __future__ import annotations

import os
import pickle
import re
import string
import tempfile
from typing import Any

import torch

from .curriculum import Curriculum

_TAG = "__funcurriculum__"
_FORMAT = 1

_UMASK = os.umask(0)
os.umask(_UMASK)


def _encode(obj: Any, where: str) -> Any:
    if isinstance(obj, torch.Tensor):
        if type(obj) is not torch.Tensor and not isinstance(obj, torch.nn.Parameter):
            raise TypeError(f"cannot checkpoint {type(obj).__name__} at {where or '<root>'}")
        return obj.detach()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, Curriculum):
        return {_TAG: "Curriculum", "format": _FORMAT, "data": obj.to_dict()}
    if isinstance(obj, dict):
        if _TAG in obj:
            raise ValueError(f"dict at {where or '<root>'} uses the reserved key {_TAG!r}")
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise TypeError(f"dict key {k!r} at {where or '<root>'} must be a str or int")
            out[k] = _encode(v, f"{where}{k}.")
        return out
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        raise TypeError(
            f"namedtuple {type(obj).__name__} at {where or '<root>'} cannot be loaded without "
            "code; convert it to a dict (obj._asdict())"
        )
    if isinstance(obj, (list, tuple)):
        items = [_encode(v, f"{where}{i}.") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    raise TypeError(f"cannot checkpoint a {type(obj).__name__} at {where.rstrip('.') or '<root>'}")


def _decode(obj: Any) -> Any:
    if isinstance(obj, dict):
        if obj.get(_TAG) == "Curriculum":
            return Curriculum.from_dict(obj["data"])
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_decode(v) for v in obj)
    return obj


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(fileobj)`` on a temp file beside ``path``, fsync, rename over ``path``."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + ".", dir=directory)
    try:
        if hasattr(os, "fchmod"):  # mkstemp makes 0600 files: keep the target's mode
            try:
                mode = os.stat(path).st_mode & 0o777
            except FileNotFoundError:
                mode = 0o666 & ~_UMASK
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def save(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` to ``path`` atomically, in a format that loads without running code.

    Args:
      path: file to (over)write.
      obj: a pytree of tensors, numbers, strings, ``None``, :class:`Curriculum` s and
        optimizer states (dicts / lists / tuples; dict keys str or int).

    Raises:
      TypeError: an object that cannot be stored code-free (named at its path).

    Example:
      >>> import os, tempfile, torch, funcurriculum as fc
      >>> f = os.path.join(tempfile.mkdtemp(), "ckpt.pt")
      >>> fc.save(f, {"step": 3, "w": torch.ones(2)})
      >>> fc.load(f)["step"]
      3
    """
    payload = {_TAG: "checkpoint", "format": _FORMAT, "obj": _encode(obj, "")}
    atomic_write(path, lambda f: torch.save(payload, f))


def load(path: str | os.PathLike, map_location: Any = None, *, mmap: bool = False) -> Any:
    """Read a checkpoint written by :func:`save` (never unpickles code).

    Args:
      path: the file.
      map_location: as in ``torch.load`` (e.g. ``"cpu"``).
      mmap: map the tensors from the file instead of reading them (``torch.load``'s
        ``mmap``): near-instant for large files, pages are read on first use. The
        mapping survives the file being replaced or rotated away (POSIX).

    Returns:
      The stored object, with curricula rebuilt.

    Example:
      >>> import os, tempfile, torch, funcurriculum as fc
      >>> f = os.path.join(tempfile.mkdtemp(), "c.pt")
      >>> fc.save(f, {"cur": fc.Curriculum({"w": torch.zeros(2)}).freeze("w")})
      >>> fc.load(f)["cur"].frozen
      frozenset({'w'})

    Raises:
      ValueError: the file is not a funcurriculum checkpoint, is truncated or corrupted,
        or holds objects that would need code to load (a pickle with arbitrary classes
        is refused before anything in it runs; the message names the refused globals).
      FileNotFoundError: no such file.
    """
    name = os.fspath(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        found = re.findall(r"GLOBAL ([\w.]+)", str(exc))
        detail = re.search(
            r"WeightsUnpickler error:\s*(.*?)\s*(?:Check the documentation|$)", str(exc), re.S
        )
        what = f" ({', '.join(dict.fromkeys(found))})" if found else ""
        if not found and detail and detail.group(1):
            what = f" ({' '.join(detail.group(1).split())})"
        raise ValueError(
            f"refusing to load {name!r}: it holds objects that would run code to rebuild{what}; "
            "a funcurriculum checkpoint holds only tensors and plain containers. Do not load "
            "this file with weights_only=False unless you trust its source"
        ) from None
    except (RuntimeError, EOFError, KeyError, UnicodeDecodeError) as exc:
        raise ValueError(
            f"{name!r} is not a readable checkpoint (truncated, corrupted or another format): "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None
    if not isinstance(payload, dict) or payload.get(_TAG) != "checkpoint":
        raise ValueError(f"{name!r} is not a funcurriculum checkpoint")
    if payload.get("format") != _FORMAT:
        raise ValueError(f"{name!r} has unsupported format {payload.get('format')!r}")
    return _decode(payload["obj"])


# -- rotation ----------------------------------------------------------------------------
_FIELDS = ("step", "epoch")


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Regex matching the file names :func:`format_path` produces from ``pattern``."""
    parts = []
    fields = []
    try:
        parsed = list(string.Formatter().parse(pattern))
    except ValueError as exc:
        raise ValueError(f"bad checkpoint path pattern {pattern!r}: {exc}") from None
    for literal, field, _spec, _conv in parsed:
        parts.append(re.escape(literal))
        if field is None:
            continue
        if field not in _FIELDS:
            raise ValueError(
                f"checkpoint path pattern {pattern!r} uses the field {{{field}}}; only "
                f"{{step}} and {{epoch}} are allowed"
            )
        if field in fields:
            parts.append(f"(?P={field})")
        else:
            parts.append(f"(?P<{field}>-?\\d+)")
            fields.append(field)
    if "step" not in fields and "epoch" not in fields:
        raise ValueError(
            f"checkpoint path pattern {pattern!r} needs a {{step}} (or {{epoch}}) field, "
            "e.g. 'ckpt/step{step:08d}.pt'"
        )
    return re.compile("".join(parts))


def format_path(pattern: str | os.PathLike, step: int, epoch: int = 0) -> str:
    """``pattern`` with ``{step}`` / ``{epoch}`` filled in (a plain path is returned as is)."""
    pattern = os.fspath(pattern)
    if "{" not in pattern:
        return pattern
    directory, base = os.path.split(pattern)
    if "{" in directory:
        raise ValueError(f"checkpoint path pattern {pattern!r}: fields only in the file name")
    _pattern_regex(base)  # validates the fields
    return pattern.format(step=step, epoch=epoch)


def checkpoint_files(pattern: str | os.PathLike) -> list[str]:
    """Existing files that ``pattern`` names, oldest first (by step, then epoch).

    Args:
      pattern: a path whose file name holds ``{step}`` and / or ``{epoch}`` fields
        (format specs such as ``{step:08d}`` allowed); the directory part is literal.

    Returns:
      Paths, sorted by (step, epoch) numerically.

    Example:
      >>> import os, tempfile, funcurriculum as fc
      >>> d = tempfile.mkdtemp()
      >>> for s in (10, 9, 100):
      ...     fc.save(os.path.join(d, f"step{s}.pt"), {"s": s})
      >>> [os.path.basename(p) for p in fc.checkpoint_files(os.path.join(d, "step{step}.pt"))]
      ['step9.pt', 'step10.pt', 'step100.pt']
    """
    pattern = os.fspath(pattern)
    directory, base = os.path.split(pattern)
    if "{" in directory:
        raise ValueError(f"checkpoint path pattern {pattern!r}: fields only in the file name")
    rx = _pattern_regex(base)
    found = []
    try:
        names = os.listdir(directory or ".")
    except FileNotFoundError:
        return []
    for n in names:
        m = rx.fullmatch(n)
        if m:
            d = m.groupdict()
            found.append((int(d.get("step") or 0), int(d.get("epoch") or 0), n))
    found.sort()
    return [os.path.join(directory, n) for _, _, n in found]


def latest_checkpoint(pattern: str | os.PathLike) -> str | None:
    """The newest file ``pattern`` names (highest step, then epoch), or ``None``.

    Args:
      pattern: as in :func:`checkpoint_files`.

    Returns:
      The path, or ``None`` when no file matches.

    Example:
      >>> import os, tempfile, funcurriculum as fc
      >>> d = tempfile.mkdtemp()
      >>> fc.latest_checkpoint(os.path.join(d, "step{step}.pt")) is None
      True
    """
    files = checkpoint_files(pattern)
    return files[-1] if files else None


def rotate(pattern: str | os.PathLike, keep_last: int) -> list[str]:
    """Delete all but the newest ``keep_last`` files that ``pattern`` names.

    Args:
      pattern: as in :func:`checkpoint_files`.
      keep_last: how many files to keep (>= 1).

    Returns:
      The deleted paths.
    """
    if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1:
        raise ValueError(f"keep_last must be an int >= 1, got {keep_last!r}")
    files = checkpoint_files(pattern)
    doomed = files[: max(0, len(files) - keep_last)]
    for f in doomed:
        try:
            os.unlink(f)
        except FileNotFoundError:
            pass
    return doomed
