"""Code-free, atomic checkpoints of pytrees (tensors, numbers, strings, curricula, states).

Format: ``torch.save`` of plain containers only (dict, list, tuple, str, int, float,
bool, None, tensors); a ``Curriculum`` is stored as a tagged dict of plain data.
Loading uses ``torch.load(weights_only=True)``, whose unpickler admits only those
types, so a file can never run code. Writes go to a temporary file in the target's
directory, are fsynced, then renamed over the target (``os.replace`` is atomic on
POSIX and Windows): a crash leaves either the old file or the new one. Before
``torch.load`` reads a file, every record's size and CRC-32 are verified
(``_record_check``), so a corrupted file is refused with a ``ValueError`` naming it.

Rotation: a path *pattern* such as ``"ckpt/step{step:08d}.pt"`` names one file per
step; ``checkpoint_files`` lists the files a pattern matches (oldest first),
``latest_checkpoint`` returns the newest and ``rotate`` deletes all but the
newest ``keep_last``.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import pickle
import re
import socket
import stat
import string
import tempfile
import time
import warnings
from typing import Any

import torch

from ._record_check import (
    ZIP_MAGIC,
    check_tensors,
    overcommitted,
    pickle_globals,
    verify_archive,
)
from .curriculum import Curriculum

_TAG = "__funcurriculum__"
_FORMAT = 1

_UMASK = os.umask(0)
os.umask(_UMASK)


def _encode(obj: Any, where: str) -> Any:
    if isinstance(obj, torch.Tensor):
        if type(obj) is not torch.Tensor and not isinstance(obj, torch.nn.Parameter):
            raise TypeError(f"cannot checkpoint {type(obj).__name__} at {where or '<root>'}")
        # a view declaring more elements than its storage (expand) is refused at load
        return obj.detach().contiguous() if overcommitted(obj) else obj.detach()
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


# -- atomic writes -----------------------------------------------------------------------
# Temp files are named ``.tmp-fc-<host>-<pid>-<random>``: short (any target name fits the
# file-name limit), and recognisable, so a later save into the folder can delete the ones
# whose writer died (killed mid-write: nothing else would ever remove them).
_TMP_PREFIX = ".tmp-fc-"
_TMP_RE = re.compile(r"\.tmp-fc-([0-9a-f]{6})-(\d+)-[a-z0-9_]{8}")
_OLD_TMP_RE = re.compile(r"\.tmp-(.+)\.[a-z0-9_]{8}")  # before 0.x: .tmp-<target>.<random>
STALE_AGE_S = 24 * 3600.0  # a temp file this old is stale whoever wrote it


def _host_tag() -> str:
    return hashlib.blake2b(socket.gethostname().encode(), digest_size=3).hexdigest()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name != "posix":  # os.kill(pid, 0) would terminate the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


_CKPT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".tar")


def _old_scheme_ours(middle: str, names: set[str]) -> bool:
    """Whether ``.tmp-<middle>.<random>`` looks like an older version's temp of a checkpoint."""
    return middle in names or middle.endswith(_CKPT_SUFFIXES)


def clean_stale_temps(directory: str | os.PathLike) -> list[str]:
    """Delete temp files of interrupted saves in ``directory`` (only funcurriculum's own).

    A temp file ``.tmp-fc-<host>-<pid>-<random>`` is stale when it was made on this host
    by a process that no longer runs, or (any host, e.g. a shared file system) when it
    is older than ``STALE_AGE_S`` (a day). Temp files of older funcurriculum versions
    (``.tmp-<name>.<random>``, where ``<name>`` is a file in the folder or ends in a
    checkpoint suffix such as ``.pt``) are stale after a day. Non-regular files are
    never touched.

    Args:
      directory: the folder to clean.

    Returns:
      The deleted paths.
    """
    directory = os.fspath(directory) or "."
    host, now, gone = _host_tag(), time.time(), []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return gone
    names = {e.name for e in entries}
    for e in entries:
        m = _TMP_RE.fullmatch(e.name)
        if m is None:
            old_m = _OLD_TMP_RE.fullmatch(e.name)
            if old_m is None or not _old_scheme_ours(old_m.group(1), names):
                continue
        try:
            st = e.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        old = now - st.st_mtime > STALE_AGE_S
        dead = m is not None and m.group(1) == host and not _pid_alive(int(m.group(2)))
        if old or dead:
            try:
                os.unlink(e.path)
                gone.append(e.path)
            except OSError:
                pass
    return gone


def _write_target(path: str) -> str:
    """The file a save to ``path`` replaces: symlinks followed; refusals raised here."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except FileNotFoundError:
        return real
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "cannot save over a directory", path)
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"cannot save over {path!r}: it is not a regular file (a FIFO, device?)")
    if not st.st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
        raise PermissionError(
            errno.EACCES,
            "refusing to replace a read-only checkpoint (make it writable to overwrite it)",
            path,
        )
    return real


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(fileobj)`` on a temp file beside ``path``, fsync, rename over ``path``.

    A symlink at ``path`` is followed (its target is replaced, the link stays); a
    read-only file, a directory or a non-regular file at ``path`` is refused. Stale
    temp files of earlier interrupted saves in the folder are deleted first
    (`clean_stale_temps`).
    """
    path = _write_target(os.fspath(path))
    directory = os.path.dirname(path)
    clean_stale_temps(directory)
    fd, tmp = tempfile.mkstemp(prefix=f"{_TMP_PREFIX}{_host_tag()}-{os.getpid()}-", dir=directory)
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
      obj: a pytree of tensors, numbers, strings, ``None``, ``Curriculum`` objects and
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
    """Read a checkpoint written by ``save`` (never unpickles code).

    Args:
      path: the file.
      map_location: as in ``torch.load`` (e.g. ``"cpu"``).
      mmap: map the tensors from the file instead of reading them (``torch.load``'s
        ``mmap``): near-instant for large files, pages are read on first use. The
        mapping survives the file being replaced or rotated away (POSIX). The record
        sizes are checked, but the CRC pass (which reads every byte) is skipped.

    Returns:
      The stored object, with curricula rebuilt.

    Example:
      >>> import os, tempfile, torch, funcurriculum as fc
      >>> f = os.path.join(tempfile.mkdtemp(), "c.pt")
      >>> fc.save(f, {"cur": fc.Curriculum({"w": torch.zeros(2)}).freeze("w")})
      >>> fc.load(f)["cur"].frozen
      frozenset({'w'})

    Raises:
      ValueError: naming the file, for every way it can be unreadable: not a regular
        file, not a funcurriculum checkpoint, truncated, a record whose CRC-32 fails
        (one flipped bit), records declaring more bytes than the file holds or
        inflating more than 20x, tensors declaring more elements than their storage,
        malformed records, or objects that would need code to load (a pickle with
        arbitrary classes is refused before anything in it runs; the message names
        the refused globals).
      FileNotFoundError: no such file.
    """
    name = os.fspath(path)
    st = os.stat(name)  # FileNotFoundError as is: there is nothing to read
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{name!r} is not a regular file (a directory, FIFO or device)")
    with open(name, "rb") as f:
        if f.read(4) != ZIP_MAGIC:  # fc.save writes torch's zip format only
            f.seek(0)
            _refuse_non_zip(f, name)
        verify_archive(f, name, crc=not mmap)
        f.seek(0)
        payload = _torch_load(f if not mmap else name, name, map_location, mmap)
    check_tensors(payload, name)
    if not isinstance(payload, dict) or payload.get(_TAG) != "checkpoint":
        raise ValueError(f"{name!r} is not a funcurriculum checkpoint")
    if payload.get("format") != _FORMAT:
        raise ValueError(f"{name!r} has unsupported format {payload.get('format')!r}")
    try:
        return _decode(payload["obj"])
    except Exception as exc:  # a malformed Curriculum record, a missing key
        raise ValueError(
            f"{name!r}: malformed checkpoint record: {type(exc).__name__}: {exc}"
        ) from None


def _refuse_code(name: str, what: str) -> ValueError:
    return ValueError(
        f"refusing to load {name!r}: it holds objects that would run code to rebuild{what}; "
        "a funcurriculum checkpoint holds only tensors and plain containers. Do not load "
        "this file with weights_only=False unless you trust its source"
    )


_SCAN_BYTES = 1 << 20


def _refuse_non_zip(f: Any, name: str) -> None:
    """Refuse a file that is not a torch zip archive, never handing it to ``torch.load``."""
    found = pickle_globals(io.BytesIO(f.read(_SCAN_BYTES)))  # bounded: sizes can be forged
    if found is None:
        raise ValueError(
            f"{name!r} is not a readable checkpoint (truncated, corrupted or another format)"
        )
    if found:
        raise _refuse_code(name, f" ({', '.join(found)})")
    raise ValueError(f"{name!r} is not a funcurriculum checkpoint (not a torch zip archive)")


def _torch_load(f: Any, name: str, map_location: Any, mmap: bool) -> Any:
    """``torch.load(weights_only=True)`` with every failure turned into a ``ValueError``."""
    try:
        return torch.load(f, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        found = re.findall(r"GLOBAL ([\w.]+)", str(exc))
        detail = re.search(
            r"WeightsUnpickler error:\s*(.*?)\s*(?:Check the documentation|$)", str(exc), re.S
        )
        what = f" ({', '.join(dict.fromkeys(found))})" if found else ""
        if not found and detail and detail.group(1):
            what = f" ({' '.join(detail.group(1).split())})"
        raise _refuse_code(name, what) from None
    except Exception as exc:  # RuntimeError, EOFError, KeyError, IndexError, OSError, ...
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ValueError(
            f"{name!r} is not a readable checkpoint (truncated, corrupted or another format): "
            f"{type(exc).__name__}: {first}"
        ) from None


# -- rotation ----------------------------------------------------------------------------
_FIELDS = ("step", "epoch")
_SPEC = re.compile(
    r"(?:(?P<fill>.)?(?P<align>[<>=^]))?(?P<sign>[-+ ])?(?P<alt>#)?(?P<zero>0)?"
    r"(?P<width>\d+)?(?P<group>[,_])?(?P<type>[bdoxXn])?"
)
_DIGITS = {"b": "01", "o": "0-7", "x": "0-9a-f", "X": "0-9A-F"}
_BASES = {"b": 2, "o": 8, "x": 16, "X": 16}


def _field_regex(pattern: str, field: str, spec: str) -> tuple[str, str]:
    """A regex group for one field, and the spec's type (``d``, ``x``, ...)."""
    m = _SPEC.fullmatch(spec)
    if m is None:
        raise ValueError(
            f"checkpoint path pattern {pattern!r}: {{{field}:{spec}}} is not an integer format "
            "(use e.g. {step}, {step:08d}, {step:,}, {step:x})"
        )
    kind = m.group("type") or "d"
    chars = _DIGITS.get(kind, "0-9") + re.escape(",_+- ")
    if m.group("alt"):
        chars += "xXobB"
    if m.group("fill"):
        chars += re.escape(m.group("fill"))
    return f"(?P<{field}>[{chars}]+?)", kind


def _parse_int(text: str, kind: str) -> int | None:
    s = text.replace(",", "").replace("_", "").strip()
    neg = s.startswith("-")
    s = s.lstrip("+-").strip()
    if len(s) > 2 and s[0] == "0" and s[1] in "xXoObB":
        s = s[2:]
    try:
        v = int(s, _BASES.get(kind, 10))
    except ValueError:
        return None
    return -v if neg else v


def _pattern_parts(pattern: str) -> tuple[re.Pattern[str], dict[str, str]]:
    """Regex matching candidate names for ``pattern``'s file name, and the field types."""
    parts = []
    kinds: dict[str, str] = {}
    try:
        parsed = list(string.Formatter().parse(pattern))
    except ValueError as exc:
        raise ValueError(f"bad checkpoint path pattern {pattern!r}: {exc}") from None
    for literal, field, spec, conv in parsed:
        parts.append(re.escape(literal))
        if field is None:
            continue
        if field not in _FIELDS:
            raise ValueError(
                f"checkpoint path pattern {pattern!r} uses the field {{{field}}}; only "
                f"{{step}} and {{epoch}} are allowed"
            )
        if conv:
            raise ValueError(f"checkpoint path pattern {pattern!r}: no !{conv} conversions")
        if field in kinds:
            parts.append(f"(?P={field})")
            continue
        rx, kinds[field] = _field_regex(pattern, field, spec or "")
        parts.append(rx)
    if not kinds:
        raise ValueError(
            f"checkpoint path pattern {pattern!r} needs a {{step}} (or {{epoch}}) field, "
            "e.g. 'ckpt/step{step:08d}.pt'"
        )
    return re.compile("".join(parts)), kinds


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Regex matching candidate file names of ``pattern`` (validates the fields)."""
    return _pattern_parts(pattern)[0]


def _split(pattern: str) -> tuple[str, str]:
    directory, base = os.path.split(pattern)
    if "{" in directory:
        raise ValueError(f"checkpoint path pattern {pattern!r}: fields only in the file name")
    return directory, base


def format_path(pattern: str | os.PathLike, step: int, epoch: int = 0) -> str:
    """``pattern`` with ``{step}`` / ``{epoch}`` filled in (a plain path is returned as is)."""
    pattern = os.fspath(pattern)
    if "{" not in pattern:
        return pattern
    _directory, base = _split(pattern)
    _pattern_parts(base)  # validates the fields
    return pattern.format(step=step, epoch=epoch)


def _matches(pattern: str | os.PathLike) -> list[tuple[tuple[int, int], str]]:
    """``((step, epoch), path)`` of the regular files ``pattern`` names, oldest first.

    A name counts only if formatting the pattern with the parsed numbers gives that very
    name back (so ``run{step:08d}.pt`` never claims ``run5.pt``).
    """
    pattern = os.fspath(pattern)
    directory, base = _split(pattern)
    rx, kinds = _pattern_parts(base)
    found = []
    try:
        entries = list(os.scandir(directory or "."))
    except (FileNotFoundError, NotADirectoryError):
        return []
    for e in entries:
        m = rx.fullmatch(e.name)
        if m is None:
            continue
        values = {f: _parse_int(m.group(f), k) for f, k in kinds.items()}
        if any(v is None for v in values.values()):
            continue
        if base.format(step=values.get("step", 0), epoch=values.get("epoch", 0)) != e.name:
            continue
        try:
            if not e.is_file():  # directories, FIFOs, sockets, dangling links: not ours
                continue
        except OSError:
            continue
        key = (values.get("step", 0), values.get("epoch", 0))
        found.append((key, os.path.join(directory, e.name)))
    found.sort()
    return found


def checkpoint_files(pattern: str | os.PathLike) -> list[str]:
    """Existing files that ``pattern`` names, oldest first (by step, then epoch).

    Only regular files (or links to them) whose name the pattern itself produces count:
    ``run{step:08d}.pt`` matches ``run00000005.pt``, not ``run5.pt``; directories and
    FIFOs are skipped.

    Args:
      pattern: a path whose file name holds ``{step}`` and / or ``{epoch}`` fields
        (integer format specs allowed: ``{step:08d}``, ``{step:,}``, ``{step:x}``); the
        directory part is literal.

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
    return [p for _, p in _matches(pattern)]


def latest_checkpoint(pattern: str | os.PathLike) -> str | None:
    """The newest file ``pattern`` names (highest step, then epoch), or ``None``.

    Args:
      pattern: as in ``checkpoint_files``.

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


def rotate(pattern: str | os.PathLike, keep_last: int, *, newest: str | None = None) -> list[str]:
    """Delete all but the newest ``keep_last`` files that ``pattern`` names.

    Args:
      pattern: as in ``checkpoint_files``.
      keep_last: how many files to keep (>= 1).
      newest: the file just written: it is kept, and only files *older* than it (by
        step, then epoch) are deleted; files with higher numbers (a rollback, or a
        restart in the same folder) are kept, with a warning.

    Returns:
      The deleted paths.
    """
    if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1:
        raise ValueError(f"keep_last must be an int >= 1, got {keep_last!r}")
    found = _matches(pattern)
    if newest is not None:
        same = os.path.realpath(newest)
        mine = [k for k, p in found if os.path.realpath(p) == same]
        if mine:
            newer = [p for k, p in found if k > mine[0]]
            if newer:
                warnings.warn(
                    f"rotation of {os.fspath(pattern)!r}: {len(newer)} file(s) with higher "
                    f"steps than the one just written exist (a rollback or a restart in the "
                    f"same folder?); kept, not deleted: {newer[:4]}",
                    stacklevel=3,
                )
            older = [p for k, p in found if k < mine[0]]
            doomed = older[: max(0, len(older) - (keep_last - 1))]
        else:
            doomed = []
    else:
        files = [p for _, p in found]
        doomed = files[: max(0, len(files) - keep_last)]
    for f in doomed:
        try:
            os.unlink(f)
        except FileNotFoundError:
            pass
    return doomed
