"""Code-free, atomic checkpoints of pytrees (tensors, numbers, strings, curricula, states).

Format: ``torch.save`` of plain containers only (dict, list, tuple, str, int, float,
bool, None, tensors); a ``Curriculum`` is stored as a tagged dict of plain data.
Loading uses ``torch.load(weights_only=True)``, whose unpickler admits only those
types, so a file can never run code. Writes go to a temporary file in the target's
directory, are fsynced, then renamed over the target (``os.replace`` is atomic on
POSIX and Windows): a crash leaves either the old file or the new one.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from typing import Any

import torch

from .curriculum import Curriculum

_TAG = "__funcurriculum__"
_FORMAT = 1


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


def load(path: str | os.PathLike, map_location: Any = None) -> Any:
    """Read a checkpoint written by :func:`save` (never unpickles code).

    Args:
      path: the file.
      map_location: as in ``torch.load`` (e.g. ``"cpu"``).

    Returns:
      The stored object, with curricula rebuilt.

    Raises:
      ValueError: the file is not a funcurriculum checkpoint, or holds objects that
        would need code to load (a pickle with arbitrary classes is refused).
    """
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"refusing to load {os.fspath(path)!r}: it holds objects that need code to "
            f"rebuild (only tensors and plain containers are allowed): {exc}"
        ) from None
    if not isinstance(payload, dict) or payload.get(_TAG) != "checkpoint":
        raise ValueError(f"{os.fspath(path)!r} is not a funcurriculum checkpoint")
    if payload.get("format") != _FORMAT:
        raise ValueError(f"{os.fspath(path)!r} has unsupported format {payload.get('format')!r}")
    return _decode(payload["obj"])
