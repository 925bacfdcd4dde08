"""Integrity checks of a checkpoint file, run before and right after ``torch.load``.

A file written by ``torch.save`` is a zip archive of uncompressed records (the pickle,
one record per tensor storage), each with a CRC-32 in the archive's directory. torch's
reader never checks those CRCs, nor what the records declare against the file's size.
``verify_archive`` does, before torch reads anything: every record's declared size
must fit the file (a compressed record may inflate at most ``MAX_RATIO`` times), and,
unless ``crc=False``, every record is read and its CRC compared, so one flipped bit
anywhere in the data is refused. ``check_tensors`` then refuses tensors that
declare more elements than their storage holds (stride-0 / overlapping views of a huge
declared size), before any caller computes with them.

Every refusal is a ``ValueError`` naming the file.
"""

from __future__ import annotations

import os
import pickletools
import zipfile
from typing import Any, BinaryIO

import torch

ZIP_MAGIC = b"PK\x03\x04"
MAX_RATIO = 20  # a deflated record may declare at most this many times its stored bytes
_CHUNK = 1 << 20


def _bad(name: str, why: str) -> ValueError:
    return ValueError(
        f"{name!r} is not a readable checkpoint (truncated, corrupted or another format): {why}"
    )


def verify_archive(f: BinaryIO, name: str, *, crc: bool = True) -> None:
    """Refuse a torch zip archive whose records do not fit the file or fail their CRC.

    Args:
      f: the open file (binary, seekable); left at an unspecified position.
      name: the file's name, for the messages.
      crc: read every record and check its CRC-32 (off: sizes and layout only).

    Raises:
      ValueError: naming the file and the first bad record.
    """
    size = os.fstat(f.fileno()).st_size
    try:
        z = zipfile.ZipFile(f)
    except Exception as exc:  # BadZipFile, OSError, struct / value errors on garbage
        raise _bad(name, f"{type(exc).__name__}: {exc}") from None
    with z:
        infos = z.infolist()
        if not infos:
            raise _bad(name, "empty archive")
        stored = 0
        for info in infos:
            where = f"record {info.filename!r}"
            if info.compress_type == zipfile.ZIP_STORED:
                if info.file_size != info.compress_size:
                    raise _bad(
                        name,
                        f"{where} declares {info.file_size} bytes but stores {info.compress_size}",
                    )
            elif info.compress_type == zipfile.ZIP_DEFLATED:
                if info.file_size > MAX_RATIO * max(info.compress_size, 1):
                    raise _bad(
                        name,
                        f"{where} would inflate {info.compress_size} bytes to "
                        f"{info.file_size} (more than {MAX_RATIO}x): refused before "
                        "allocating",
                    )
            else:
                raise _bad(name, f"{where} uses unsupported compression {info.compress_type}")
            if info.header_offset + info.compress_size > size:
                raise _bad(name, f"{where} extends past the end of the file")
            stored += info.compress_size
        if stored > size:
            raise _bad(name, f"records declare {stored} bytes, the file has {size}")
        if not crc:
            return
        for info in infos:
            try:
                with z.open(info) as r:
                    while r.read(_CHUNK):
                        pass
            except Exception as exc:  # BadZipFile (bad CRC, header mismatch), zlib, EOF
                raise _bad(name, f"record {info.filename!r}: {type(exc).__name__}: {exc}") from None


_STRING_OPS = {
    "SHORT_BINUNICODE",
    "BINUNICODE",
    "BINUNICODE8",
    "UNICODE",
    "STRING",
    "BINSTRING",
    "SHORT_BINSTRING",
}
_GET_OPS = {"GET", "BINGET", "LONG_BINGET"}


def pickle_globals(f: BinaryIO) -> list[str] | None:
    """The globals a pickle stream names, read opcode by opcode without running it.

    ``fc.save`` writes torch's zip format only, so a file that is not a zip archive is
    refused without handing it to ``torch.load`` (whose legacy reader allocates the
    storage sizes a file declares); this scan only names what the refusal is about.

    Returns:
      ``"module.name"`` strings (in order, deduplicated), or ``None`` when the stream
      is not a readable pickle.
    """
    names: list[str] = []
    strings: list[str] = []
    memo: dict[int, object] = {}
    try:
        for op, arg, _pos in pickletools.genops(f):
            if op.name in _STRING_OPS:
                strings.append(arg if isinstance(arg, str) else repr(arg))
            elif op.name == "MEMOIZE" and strings:
                memo[len(memo)] = strings[-1]
            elif op.name in ("PUT", "BINPUT", "LONG_BINPUT") and strings:
                memo[arg] = strings[-1]
            elif op.name in _GET_OPS and isinstance(memo.get(arg), str):
                strings.append(memo[arg])  # type: ignore[arg-type]
            elif op.name in ("GLOBAL", "INST"):
                names.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL":
                names.append(".".join(strings[-2:]) if len(strings) >= 2 else "<global>")
    except Exception:  # not a pickle, or truncated
        return names or None
    return list(dict.fromkeys(names))


def check_tensors(obj: Any, name: str) -> None:
    """Refuse tensors in ``obj`` that declare more elements than their storage holds.

    ``fc.save`` stores every tensor over a storage at least as large as the tensor
    (stride-0 / self-overlapping views are made contiguous when saved), so a tensor
    viewing a few bytes as 1e12 elements is a crafted file.

    Raises:
      ValueError: naming the file and the path of the tensor.
    """
    stack: list[tuple[Any, str]] = [(obj, "")]
    while stack:
        x, where = stack.pop()
        if isinstance(x, torch.Tensor):
            if overcommitted(x):
                need, have = x.numel() * x.element_size(), x.untyped_storage().nbytes()
                raise ValueError(
                    f"{name!r}: the tensor at {where.rstrip('.') or '<root>'} declares shape "
                    f"{tuple(x.shape)} ({need} bytes) over a storage of {have} bytes; "
                    "fc.save never writes such views: refused"
                )
        elif isinstance(x, dict):
            stack.extend((v, f"{where}{k}.") for k, v in x.items())
        elif isinstance(x, (list, tuple)):
            stack.extend((v, f"{where}{i}.") for i, v in enumerate(x))


def overcommitted(t: torch.Tensor) -> bool:
    """Whether ``t`` declares more bytes than its storage holds (e.g. an ``expand`` view).

    Only strided tensors have one storage to compare with (sparse tensors are validated
    by torch's own loader).
    """
    if t.layout != torch.strided:
        return False
    return t.numel() * t.element_size() > t.untyped_storage().nbytes()
