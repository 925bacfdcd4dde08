"""Full training-state checkpoints: everything needed to resume a curriculum run exactly.

One file holds the params, the optimizer state (moments and per-leaf counts), the
``Curriculum`` in force (frozen set and coefficients), the global
step and epoch, the random number generator states and any extra plain data. It is
written with ``save`` (atomic, code-free), and
``load_training_state`` checks it against the model before returning anything.

The phase schedule is not stored: a schedule is data that your code builds, and
asking it for the stored ``step`` / ``epoch`` gives back the schedule position.
"""

from __future__ import annotations

import numbers
import os
import random
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ._state_check import check_opt_state
from ._tree import PyTree, describe_mismatch, flatten_with_paths
from .checkpoint import format_path, load, rotate, save
from .curriculum import Curriculum

_KIND = "funcurriculum.training_state"
_VERSION = 1


# -- random number generators ----------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """Snapshot of the global random number generators, as plain checkpointable data.

    Covers torch's CPU generator, every CUDA device's generator (when CUDA is
    available), Python's ``random`` and, when numpy has been imported, numpy's
    legacy global generator (``np.random.*``). Generators you create yourself
    (``torch.Generator``, ``np.random.default_rng``) are yours to store, e.g. in
    ``extra``.

    Returns:
      A dict for ``set_rng_state`` (tensors, numbers and tuples only).

    Example:
      >>> import torch, funcurriculum as fc
      >>> s = fc.rng_state()
      >>> a = torch.rand(2)
      >>> fc.set_rng_state(s)
      >>> torch.equal(a, torch.rand(2))
      True
    """
    out: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = list(torch.cuda.get_rng_state_all())
    out["python"] = random.getstate()
    np = sys.modules.get("numpy")
    if np is not None:
        name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
        out["numpy"] = {
            "bit_generator": str(name),
            "keys": torch.from_numpy(keys.astype("int64")),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        }
    return out


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the generators captured by ``rng_state``.

    Components absent from ``state`` are left alone. CUDA states are restored when
    CUDA is available (a warning says when they cannot be: e.g. a GPU checkpoint
    resumed on a CPU-only machine, which cannot be bit-exact anyway).

    Args:
      state: a dict from ``rng_state`` (possibly loaded from a checkpoint).

    Raises:
      ValueError: unknown components or malformed entries (nothing is restored then).

    Example:
      >>> import random, funcurriculum as fc
      >>> s = fc.rng_state()
      >>> a = random.random()
      >>> fc.set_rng_state(s)
      >>> random.random() == a
      True
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"rng state must be a dict from fc.rng_state(), got {type(state).__name__}")
    unknown = sorted(set(state) - {"torch", "cuda", "python", "numpy"})
    if unknown:
        raise ValueError(f"rng state has unknown components {unknown}")
    t, py, cuda, npstate = (state.get(k) for k in ("torch", "python", "cuda", "numpy"))
    _check_rng_entries(t, py, cuda, npstate)
    # Validate everything first, then restore, so a bad state changes nothing.
    if t is not None:
        torch.set_rng_state(t.cpu())
    if cuda:
        if torch.cuda.is_available():
            n = torch.cuda.device_count()
            if n != len(cuda):
                warnings.warn(
                    f"checkpoint holds {len(cuda)} CUDA generator states, this machine has "
                    f"{n} devices: restoring the first {min(n, len(cuda))}",
                    stacklevel=2,
                )
            for i, s in enumerate(cuda[:n]):
                torch.cuda.set_rng_state(s.cpu(), i)
        else:
            warnings.warn(
                "checkpoint holds CUDA generator states but CUDA is not available: not restored",
                stacklevel=2,
            )
    if py is not None:
        random.setstate(_python_state(py))
    if npstate is not None:
        import numpy as np

        np.random.set_state(_numpy_state(npstate))


def _python_state(py: Any) -> tuple:
    version, internal, gauss = py
    return (version, tuple(internal), gauss)


def _numpy_state(npstate: Mapping[str, Any]) -> tuple:
    import numpy as np  # only stored when numpy was imported

    return (
        npstate["bit_generator"],
        npstate["keys"].numpy().astype(np.uint32),
        npstate["pos"],
        npstate["has_gauss"],
        npstate["cached_gaussian"],
    )


def _check_rng_entries(t: Any, py: Any, cuda: Any, npstate: Any) -> None:
    """Refuse malformed generator states, by loading each into a scratch generator.

    Raises:
      ValueError: naming the entry; no global generator has been touched.
    """
    if t is not None:
        if not (isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.dim() == 1):
            raise ValueError("rng state 'torch' must be a uint8 tensor from torch.get_rng_state()")
        try:
            torch.Generator().set_state(t.cpu())
        except Exception as exc:
            raise ValueError(f"rng state 'torch' is malformed: {exc}") from None
    if py is not None:
        if not (isinstance(py, tuple) and len(py) == 3 and isinstance(py[1], (tuple, list))):
            raise ValueError("rng state 'python' must be the tuple random.getstate() returns")
        try:
            random.Random().setstate(_python_state(py))
        except Exception as exc:
            raise ValueError(f"rng state 'python' is malformed: {exc}") from None
    if cuda is not None and not (
        isinstance(cuda, (list, tuple))
        and all(isinstance(s, torch.Tensor) and s.dtype == torch.uint8 for s in cuda)
    ):
        raise ValueError("rng state 'cuda' must be a list of uint8 tensors")
    if cuda and torch.cuda.is_available():
        for i, s in enumerate(cuda[: torch.cuda.device_count()]):
            if s.shape != torch.cuda.get_rng_state(i).shape:
                raise ValueError(f"rng state 'cuda'[{i}] has shape {tuple(s.shape)}")
    if npstate is not None:
        np_keys = {"bit_generator", "keys", "pos", "has_gauss", "cached_gaussian"}
        if not (
            isinstance(npstate, Mapping)
            and set(npstate) == np_keys
            and isinstance(npstate["keys"], torch.Tensor)
        ):
            raise ValueError(f"rng state 'numpy' must be a dict with keys {sorted(np_keys)}")
        try:
            import numpy as np

            np.random.RandomState().set_state(_numpy_state(npstate))
        except Exception as exc:
            raise ValueError(f"rng state 'numpy' is malformed: {exc}") from None


# -- the record -----------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainingState:
    """What ``load_training_state`` returns.

    Attributes:
      params: the params pytree.
      opt_state: the optimizer state (``None`` if none was saved).
      curriculum: the ``Curriculum`` in force (or ``None``).
      step: global step (for the schedule: ``schedule.at(step, epoch)``).
      epoch: epoch.
      rng: the stored generator states (already restored unless
        ``restore_rng=False``), or ``None``.
      extra: the user's extra data.
      path: the file it came from.

    Example:
      >>> import os, tempfile, torch, funcurriculum as fc
      >>> f = os.path.join(tempfile.mkdtemp(), "s.pt")
      >>> _ = fc.save_training_state(f, params={"w": torch.ones(1)}, step=3, extra={"tag": "a"})
      >>> ts = fc.load_training_state(f)
      >>> ts.step, ts.epoch, ts.extra, ts.curriculum is None
      (3, 0, {'tag': 'a'}, True)
    """

    params: PyTree
    opt_state: Any
    curriculum: Curriculum | None
    step: int
    epoch: int
    rng: dict[str, Any] | None
    extra: Any
    path: str


def _as_count(value: Any, what: str) -> int:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_floating_point() or value.dtype == torch.bool:
            raise TypeError(f"{what} must be an int or a 0-d integer tensor, got {value!r}")
        value = int(value.item())
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{what} must be an int, got {type(value).__name__}: {value!r}")
    if value < 0:
        raise ValueError(f"{what} must be >= 0, got {value}")
    return int(value)


def _check_like(params: PyTree, like: PyTree, what: str = "checkpoint params") -> None:
    """Refuse ``params`` unless it has ``like``'s paths, shapes and dtypes.

    Raises:
      ValueError: listing every missing / unexpected path and every shape or dtype
        mismatch (path by path).
    """
    got_paths, got, _ = flatten_with_paths(params)
    ref_paths, ref, _ = flatten_with_paths(like)
    problems = []
    if list(got_paths) != list(ref_paths):
        if set(got_paths) == set(ref_paths):
            problems.append("same paths in a different order")
        else:
            problems.append(describe_mismatch(ref_paths, got_paths, limit=20))
    index = dict(zip(got_paths, got))
    bad = []
    for p, r in zip(ref_paths, ref):
        if p not in index:
            continue
        g = index[p]
        if not isinstance(g, torch.Tensor):
            bad.append(f"{p}: stored {type(g).__name__}, expected a tensor")
        elif isinstance(r, torch.Tensor):
            if g.shape != r.shape:
                bad.append(f"{p}: shape {tuple(g.shape)} vs model {tuple(r.shape)}")
            elif g.dtype != r.dtype:
                bad.append(f"{p}: dtype {g.dtype} vs model {r.dtype}")
    if bad:
        problems.append(
            "mismatched leaves [" + "; ".join(bad[:20]) + (" ..." if len(bad) > 20 else "") + "]"
        )
    if problems:
        raise ValueError(f"{what} do not match the model: " + "; ".join(problems))


def _check_consistent(params: PyTree, opt_state: Any, curriculum: Any, where: str) -> None:
    """Curriculum paths and optimizer-state trees must match the params (else refuse)."""
    ref_paths, ref, _ = flatten_with_paths(params)
    for p, leaf in zip(ref_paths, ref):
        if not isinstance(leaf, torch.Tensor):
            raise TypeError(
                f"{where}: params leaf {p!r} is a {type(leaf).__name__}, expected a tensor"
            )
    if curriculum is not None:
        if not isinstance(curriculum, Curriculum):
            raise TypeError(
                f"{where}: curriculum must be a Curriculum, got {type(curriculum).__name__}"
            )
        if list(curriculum.paths) != list(ref_paths):
            raise ValueError(
                f"{where}: the curriculum does not match the params: "
                + describe_mismatch(ref_paths, curriculum.paths)
            )
    check_opt_state(opt_state, params, where)


# -- save / load ------------------------------------------------------------------------------
def save_training_state(
    path: str | os.PathLike,
    *,
    params: PyTree,
    opt_state: Any = None,
    curriculum: Curriculum | None = None,
    step: int = 0,
    epoch: int = 0,
    extra: Any = None,
    rng: bool | Mapping[str, Any] = True,
    keep_last: int | None = None,
) -> str:
    """Save everything needed to resume a run, atomically and code-free.

    Call it after an update, with the values the next step will start from. Nothing
    is written when a check fails.

    Args:
      path: the file, or a pattern with ``{step}`` / ``{epoch}`` fields (e.g.
        ``"ckpt/step{step:08d}.pt"``) filled in from ``step`` and ``epoch``.
      params: the params pytree.
      opt_state: the optimizer state (``opt.init`` / ``opt.update``'s), or ``None``.
      curriculum: the ``Curriculum`` in force, or ``None``.
      step: global step (completed updates of the training loop).
      epoch: epoch.
      extra: any further checkpointable data (numbers, strings, tensors, containers).
      rng: ``True`` stores ``rng_state`` taken now; a dict stores that snapshot;
        ``False`` stores none.
      keep_last: keep the new file and the ``keep_last - 1`` newest files older than
        it named by the ``path`` pattern (needs a ``{step}`` or ``{epoch}`` field);
        the other older ones are deleted after the new file is in place. The file just
        written is never deleted; files with higher steps (a rollback, a restart in the
        same folder) are kept, with a warning.

    Returns:
      The path written.

    Raises:
      ValueError / TypeError: the curriculum or optimizer state does not match the
        params, a bad ``step`` / ``epoch`` / ``keep_last``, or uncheckpointable data.

    Example:
      >>> import os, tempfile, torch, funcurriculum as fc
      >>> params = {"body.w": torch.ones(2), "head.w": torch.ones(2)}
      >>> cur = fc.Curriculum(params).freeze("body")
      >>> opt = fc.adam(1e-3)
      >>> state = opt.init(params, cur.masks)
      >>> f = os.path.join(tempfile.mkdtemp(), "run-{step}.pt")
      >>> fc.save_training_state(f, params=params, opt_state=state, curriculum=cur,
      ...                        step=5, epoch=1, keep_last=2)[-8:]
      'run-5.pt'
      >>> ts = fc.load_training_state(f.format(step=5), like_params=params)
      >>> ts.step, ts.curriculum == cur
      (5, True)
    """
    step = _as_count(step, "step")
    epoch = _as_count(epoch, "epoch")
    pattern = os.fspath(path)
    target = format_path(pattern, step, epoch)
    if keep_last is not None:
        if "{" not in pattern:
            raise ValueError(
                f"keep_last needs a path pattern with a {{step}} or {{epoch}} field, got {pattern!r}"
            )
        if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1:
            raise ValueError(f"keep_last must be an int >= 1, got {keep_last!r}")
    _check_consistent(params, opt_state, curriculum, "save_training_state")
    if rng is True:
        rng_data: Any = rng_state()
    elif rng is False or rng is None:
        rng_data = None
    elif isinstance(rng, Mapping):
        rng_data = dict(rng)
    else:
        raise TypeError(f"rng must be True, False or a dict from fc.rng_state(), got {rng!r}")
    record = {
        "kind": _KIND,
        "version": _VERSION,
        "params": params,
        "opt_state": opt_state,
        "curriculum": curriculum,
        "step": step,
        "epoch": epoch,
        "rng": rng_data,
        "extra": extra,
    }
    save(target, record)
    if keep_last is not None:
        rotate(pattern, keep_last, newest=target)
    return target


def load_training_state(
    path: str | os.PathLike,
    *,
    like_params: PyTree | None = None,
    map_location: Any = None,
    restore_rng: bool = True,
    mmap: bool = False,
) -> TrainingState:
    """Load a file written by ``save_training_state`` and restore the RNG states.

    Every check runs before anything is returned or restored: with ``like_params``,
    params whose paths, shapes or dtypes differ from the model are refused with the
    list of mismatched paths, and the RNG is left untouched.

    Args:
      path: the file (see ``latest_checkpoint`` for patterns).
      like_params: the model's params (a pytree of tensors) to check against.
      map_location: as in ``torch.load`` (e.g. ``"cpu"``).
      restore_rng: restore the stored generator states (``set_rng_state``).
      mmap: map tensors from the file lazily (see ``load``).

    Returns:
      A ``TrainingState``.

    Raises:
      ValueError: naming the file, for every failure: not a training-state file, a
        corrupted or truncated file, code in the file, a mismatch with
        ``like_params``, an inconsistent or tampered optimizer state (negative or
        fractional counts, a bad step, moment dtypes or shapes unlike the params), a
        malformed curriculum or RNG entry.

    Example:
      >>> import os, tempfile, torch, funcurriculum as fc
      >>> f = os.path.join(tempfile.mkdtemp(), "s.pt")
      >>> _ = fc.save_training_state(f, params={"w": torch.ones(2)}, step=1)
      >>> try:
      ...     fc.load_training_state(f, like_params={"w": torch.zeros(3)})
      ... except ValueError as e:
      ...     print(str(e).split("model: ")[1])
      mismatched leaves [w: shape (2,) vs model (3,)]
    """
    name = os.fspath(path)
    record = load(name, map_location=map_location, mmap=mmap)
    if not isinstance(record, dict) or record.get("kind") != _KIND:
        raise ValueError(f"{name!r} is a funcurriculum checkpoint but not a training state")
    if record.get("version") != _VERSION:
        raise ValueError(f"{name!r}: unsupported training-state version {record.get('version')!r}")
    try:
        params = record["params"]
        if like_params is not None:
            _check_like(params, like_params, what=f"params in {name!r}")
        _check_consistent(params, record["opt_state"], record["curriculum"], name)
        step, epoch = record["step"], record["epoch"]
        if not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (step, epoch)
        ):
            raise ValueError(f"{name!r}: malformed step / epoch {step!r} / {epoch!r}")
        rng = record.get("rng")
        if restore_rng and rng is not None:
            set_rng_state(rng)
    except ValueError as exc:
        msg = str(exc)
        raise ValueError(msg if name in msg else f"{name!r}: {msg}") from None
    except Exception as exc:  # TypeError, KeyError, ... from a malformed record
        raise ValueError(
            f"{name!r}: malformed training state: {type(exc).__name__}: {exc}"
        ) from None
    return TrainingState(
        params=params,
        opt_state=record["opt_state"],
        curriculum=record["curriculum"],
        step=step,
        epoch=epoch,
        rng=rng,
        extra=record.get("extra"),
        path=name,
    )
