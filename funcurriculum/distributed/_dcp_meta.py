"""Code-free reading of a DCP checkpoint's ``.metadata`` file.

``torch.distributed.checkpoint.FileSystemReader.read_metadata`` is a plain
``pickle.load``: a planted ``.metadata`` runs whatever its ``__reduce__`` names. The
reader here unpickles with an allow-list of exactly the classes DCP's metadata consists
of (its dataclasses, ``torch.Size``, dtypes, layouts, paths), so any other global is
refused before it is called.

``BytesStorageMetadata`` is left out on purpose: DCP reads an entry it describes with
``torch.load(weights_only=False)`` (``DefaultLoadPlanner.load_bytes``), i.e. a planted
``.metadata`` declaring a key as bytes would have DCP unpickle code from the data file.
funcurriculum checkpoints hold tensors only, so such a file is refused.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader

_DCP_MD = "torch.distributed.checkpoint.metadata"
ALLOWED: frozenset[tuple[str, str]] = frozenset(
    {
        (_DCP_MD, "Metadata"),
        (_DCP_MD, "MetadataIndex"),
        (_DCP_MD, "ChunkStorageMetadata"),
        (_DCP_MD, "TensorStorageMetadata"),
        (_DCP_MD, "TensorProperties"),
        (_DCP_MD, "StorageMeta"),
        (_DCP_MD, "_MEM_FORMAT_ENCODING"),
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
        ("torch", "Size"),
        ("torch.serialization", "_get_layout"),
        ("collections", "OrderedDict"),
        *(
            (mod, cls)
            for mod in ("pathlib", "pathlib._local")
            for cls in ("PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath", "Path")
        ),
    }
)


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if (module, name) in ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not DCP metadata")


def read_metadata(path: str | os.PathLike) -> Any:
    """Unpickle a DCP ``.metadata`` file admitting only DCP's metadata classes.

    Args:
      path: the ``.metadata`` file.

    Returns:
      The ``torch.distributed.checkpoint.metadata.Metadata``.

    Raises:
      ValueError: a refused global (named; nothing was called), or a file that is not
        DCP metadata.
      FileNotFoundError: no such file.
    """
    name = os.fspath(path)
    with open(name, "rb") as f:
        try:
            md = _MetadataUnpickler(f).load()
        except pickle.UnpicklingError as exc:
            raise ValueError(
                f"refusing to load DCP metadata {name!r}: {exc}; it would run code to rebuild"
            ) from None
        except Exception as exc:  # truncated / foreign bytes
            raise ValueError(
                f"{name!r} is not readable DCP metadata: {type(exc).__name__}: {exc}"
            ) from None
    from torch.distributed.checkpoint.metadata import Metadata

    if not isinstance(md, Metadata):
        raise ValueError(f"{name!r} is not DCP metadata (a {type(md).__name__})")
    return md


class SafeFileSystemReader(FileSystemReader):
    """``FileSystemReader`` whose ``read_metadata`` runs no code from the file."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
        from torch.distributed.checkpoint.metadata import StorageMeta

        path = self._get_metadata_path(kwargs.get("rank"))
        md = read_metadata(path)
        if getattr(md, "storage_meta", None) is None:
            md.storage_meta = StorageMeta()
        md.storage_meta.load_id = self.load_id
        return md
