"""``Curriculum``: the immutable, sparse source of truth for freezing and LR coefficients."""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from . import _groups, _resolve, _table
from ._classes import class_hint, describe_classes, lookalike_hint, normalize_classes
from ._select import Patterns
from ._tree import PyTree, describe_mismatch, prefixes
from .param_index import ParamIndex


def _check_coefficient(coefficient: Any) -> float:
    if isinstance(coefficient, torch.Tensor):
        if coefficient.numel() != 1:
            raise TypeError(
                f"coefficient must be a number, got a tensor of shape {tuple(coefficient.shape)}"
            )
        coefficient = coefficient.item()
    if isinstance(coefficient, bool) or not isinstance(coefficient, numbers.Real):
        raise TypeError(
            f"coefficient must be a real number, got {type(coefficient).__name__}: {coefficient!r}"
        )
    c = float(coefficient)
    if not math.isfinite(c) or c < 0:
        raise ValueError(f"coefficient must be finite and >= 0, got {coefficient!r}")
    return c


class Curriculum:
    """Which leaves are frozen and which LR coefficient each leaf gets.

    Immutable: ``freeze``, ``unfreeze`` and ``set_lr_coefficient`` return new
    curricula. The state is sparse (a set of frozen names and a dict of coefficient
    entries, absent = 1.0); ``masks`` and ``coeffs`` render it densely with the
    params' structure.

    Semantics (torch_mentor's): a selected layer freezes / unfreezes its whole
    subtree, later calls winning on the subtree they select; a coefficient entry
    applies to a leaf through its most specific ancestor entry.

    ``frozen`` is canonical: the maximal fully-frozen subtrees (a layer is listed when
    all its leaves are frozen and its parent is not fully frozen). So after
    ``freeze("backbone").unfreeze("backbone.layer4")`` it lists backbone's other
    children, not ``backbone``.

    Args:
      params: the params pytree (tensors are read for structure and sizes only).

    Example:
      >>> import torch, funcurriculum as fc
      >>> p = {"backbone.conv.weight": torch.zeros(3), "head.weight": torch.zeros(2)}
      >>> cur = fc.Curriculum(p).freeze("backbone").set_lr_coefficient(0.1, "head")
      >>> cur.masks
      {'backbone.conv.weight': False, 'head.weight': True}
      >>> cur.coeffs
      {'backbone.conv.weight': 1.0, 'head.weight': 0.1}
    """

    __slots__ = ("_index", "_frozen_leaves", "_entries", "__weakref__")

    def __init__(self, params: PyTree):
        self._index = ParamIndex.from_params(params)
        self._frozen_leaves: tuple[bool, ...] = (False,) * len(self._index.paths)
        self._entries: dict[str, float] = {}

    @classmethod
    def _make(cls, index: ParamIndex, frozen_leaves: tuple[bool, ...], entries: dict[str, float]):
        obj = cls.__new__(cls)
        obj._index = index
        obj._frozen_leaves = tuple(frozen_leaves)
        obj._entries = dict(entries)
        return obj

    @classmethod
    def from_module(cls, module: torch.nn.Module) -> Curriculum:
        """A curriculum over ``dict(module.named_parameters())`` that knows layer classes.

        Everything works as for ``Curriculum(dict(module.named_parameters()))``; in
        addition the curriculum records each layer's module class (for
        ``freeze(..., keep=...)``, ``classes=`` selections and ``select_by_class``)
        and the aliases of tied weights: a parameter shared by two modules is one leaf
        (its first name), and selecting it through any of its names acts on it.

        Args:
          module: the model (read for names, classes and sizes only).

        Returns:
          A fresh ``Curriculum`` (nothing frozen, all coefficients 1.0).

        Example:
          >>> import torch, funcurriculum as fc
          >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))
          >>> cur = fc.Curriculum.from_module(m).freeze(".*", keep=fc.NORM_LAYERS)
          >>> cur.masks
          {'0.weight': False, '0.bias': False, '1.weight': True, '1.bias': True}
        """
        index = ParamIndex.from_module(module)
        return cls._make(index, (False,) * len(index.paths), {})

    @classmethod
    def from_requires_grad(cls, module: torch.nn.Module) -> Curriculum:
        """`from_module`, with the parameters that have ``requires_grad=False`` frozen.

        How models arrive from peft (``get_peft_model`` freezes the base model and
        leaves the adapters trainable) or from code that set the flags by hand. A tied
        weight is one parameter, so it has one flag.

        Args:
          module: the model (read for names, classes, sizes and ``requires_grad``).

        Returns:
          A ``Curriculum`` (all coefficients 1.0) whose masks equal the flags.

        Example:
          >>> import torch, funcurriculum as fc
          >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
          >>> m[0].requires_grad_(False)  # doctest: +ELLIPSIS
          Linear(...)
          >>> fc.Curriculum.from_requires_grad(m).frozen
          frozenset({'0'})
        """
        base = cls.from_module(module)
        flags = tuple(not p.requires_grad for p in module.parameters())
        return cls._make(base._index, flags, {})

    def __setattr__(self, name: str, value: Any) -> None:
        if hasattr(self, "_entries"):
            raise AttributeError("Curriculum is immutable; use freeze/unfreeze/set_lr_coefficient")
        object.__setattr__(self, name, value)

    # -- structure ---------------------------------------------------------------
    @property
    def index(self) -> ParamIndex:
        """The `ParamIndex` (paths, layer names, tied weights, classes) this is over."""
        return self._index

    @property
    def paths(self) -> list[str]:
        """Leaf paths in traversal order."""
        return list(self._index.paths)

    @property
    def layer_names(self) -> list[str]:
        """Layer (module) names, parent before child (a layer holding only a tied
        weight's alias is listed too)."""
        return self._index.layers

    @property
    def tied(self) -> dict[str, tuple[str, ...]]:
        """Tied weights (from ``from_module``): leaf path -> its other names."""
        return dict(self._index.tied)

    @property
    def module_classes(self) -> dict[str, str]:
        """Layer name -> qualified class name (from ``from_module``; else empty)."""
        return {n: mro[0] for n, mro in self._index.classes.items() if n}

    def select(self, patterns: Patterns) -> list[str]:
        """Names (layers and leaf paths) matched by ``patterns``; see ``select_layers``."""
        return self._index.select(patterns)

    def _need_classes(self, what: str) -> None:
        if not self._index.classes:
            raise ValueError(
                f"{what} needs a curriculum that knows layer classes: build it with "
                "Curriculum.from_module(module)"
            )

    def select_by_class(self, classes: Any, under: Patterns | None = None) -> list[str]:
        """Layer names whose module is an instance of ``classes`` (subclasses included).

        Args:
          classes: a module class, a class name (``"Linear"`` or a qualified
            ``"torch.nn.modules.linear.Linear"``), or a tuple / list of them.
          under: optional patterns; only layers inside the subtrees they select
            (the selected layers included) are returned.

        Returns:
          The matching layer names in traversal order.

        Raises:
          ValueError: the curriculum was not built by ``from_module``; nothing
            matches (the message names the classes, the patterns and the classes that
            are there); a pattern in ``under`` matches nothing.

        Example:
          >>> import torch, funcurriculum as fc
          >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(),
          ...                         torch.nn.Sequential(torch.nn.Linear(2, 2)))
          >>> fc.Curriculum.from_module(m).select_by_class(torch.nn.Linear, under="2")
          ['2.0']
        """
        self._need_classes("selecting layers by class")
        wanted = normalize_classes(classes, "classes")
        ix = self._index
        layers = [n for n in ix.layers if n in ix.classes]
        if under is not None:
            roots = self.select(under)
            layers = [n for n in layers if any(n == r or n.startswith(r + ".") for r in roots)]
        found = [n for n in layers if ix.matches_class(n, wanted)]
        present = [ix.classes[n][0] for n in layers]
        if not found:
            where = "" if under is None else f" under {under!r}"
            raise ValueError(
                f"no layer of class {describe_classes(wanted)}{where}" + class_hint(wanted, present)
            )
        hint = lookalike_hint(wanted, present)
        if hint:
            warnings.warn(
                f"select_by_class({describe_classes(wanted)}) found {len(found)} layer(s) "
                f"{found[:4]}{hint}",
                stacklevel=2,
            )
        return found

    def _selection(self, patterns: Patterns | None, classes: Any, what: str) -> list[str]:
        if classes is not None:
            return self.select_by_class(classes, under=patterns)
        if patterns is None:
            raise TypeError(f"{what} needs patterns (or classes=)")
        return self.select(patterns)

    def _leaves_of(self, names: Sequence[str]) -> set[int]:
        return self._index.leaves_of(names)

    def _leaves_of_class(self, classes: Any) -> frozenset[int]:
        """Leaves with a layer of ``classes`` on the path to them (through any name).

        The rule a prefix-based selection (``Freezer``) uses for ``keep``.
        """
        self._need_classes("keep=")
        return self._index.leaves_of_class(classes, "keep")

    # -- freezing ----------------------------------------------------------------
    def _with_frozen(self, leaves: set[int], value: bool) -> Curriculum:
        fl = list(self._frozen_leaves)
        for i in leaves:
            fl[i] = value
        return Curriculum._make(self._index, tuple(fl), self._entries)

    def freeze(
        self, patterns: Patterns | None = None, keep: Any = None, *, classes: Any = None
    ) -> Curriculum:
        """New curriculum with the selected layers' whole subtrees frozen.

        Args:
          patterns: str or list of str, matched with ``re.fullmatch`` against layer
            names and leaf paths (with ``classes``: the subtrees to look in; ``None``
            = the whole model).
          keep: a module class or a tuple of classes (or class names): layers of
            these classes inside the frozen subtrees are made trainable instead
            (fastai's / Lightning's ``train_bn`` with ``keep=fc.NORM_LAYERS``). A
            leaf is kept when a layer of a kept class lies on the path from the
            selected name down to the module owning the leaf (both included; a
            selected leaf path looks at its owner). Needs ``from_module``.
          classes: select the layers of these classes (see ``select_by_class``)
            instead of, or within, ``patterns``.

        Returns:
          A new ``Curriculum``.

        Raises:
          ValueError: unmatched pattern / class; ``keep`` or ``classes`` on a
            curriculum not built by ``from_module``; a tied weight reached
            through two names in this call, kept through one and frozen through the
            other (the message names both).
        """
        names = self._selection(patterns, classes, "freeze")
        if keep is None:
            return self._with_frozen(self._leaves_of(names), True)
        return self._freeze_keep(names, keep)

    def _freeze_keep(self, names: list[str], keep: Any) -> Curriculum:
        self._need_classes("freeze(keep=...)")
        wanted = normalize_classes(keep, "keep")
        flags = _resolve.freeze_keeping(self._index, self._frozen_leaves, names, wanted)
        return Curriculum._make(self._index, flags, self._entries)

    def unfreeze(self, patterns: Patterns | None = None, *, classes: Any = None) -> Curriculum:
        """New curriculum with the selected layers' whole subtrees trainable.

        One exception: inside peft's ``modules_to_save`` wrappers
        (``ModulesToSaveWrapper``: ``head.original_module.*`` beside the trained copy
        ``head.modules_to_save.default.*``) the original module stays frozen unless
        a selected name lies inside ``original_module`` itself; a broader selection
        that reaches it warns and leaves it frozen (peft trains the copy, and the
        original's weights are what ``disable_adapter`` restores).

        Args:
          patterns: str or list of str (see ``freeze``).
          classes: select layers by class (see ``select_by_class``).

        Returns:
          A new ``Curriculum``.
        """
        names = self._selection(patterns, classes, "unfreeze")
        leaves = self._leaves_of(names)
        guarded = _resolve.peft_originals(self._index, self._frozen_leaves, names, leaves)
        if guarded:
            shown = [self._index.paths[i] for i in sorted(guarded)]
            warnings.warn(
                f"unfreeze({patterns!r}) reaches the frozen originals of peft modules_to_save "
                f"wrappers {shown[:4]}{' ...' if len(shown) > 4 else ''}: left frozen (peft "
                "trains the '.modules_to_save.' copy); name '...original_module' to unfreeze it",
                stacklevel=2,
            )
        return self._with_frozen(leaves - guarded, False)

    # -- coefficients ----------------------------------------------------------------
    def set_lr_coefficient(
        self, coefficient: float, patterns: Patterns | None = None, *, classes: Any = None
    ) -> Curriculum:
        """New curriculum with an LR coefficient entry on each selected name.

        A leaf's coefficient is its most specific ancestor entry (the leaf path itself
        counts); an entry on a parent does not overwrite its children's own entries.
        ``1.0`` removes the entry unless an ancestor entry would then apply, in which
        case an explicit 1.0 is kept.

        A tied weight (see ``from_module``) has one coefficient, stored as an
        entry on its leaf path: a call sets it when, through at least one of the
        weight's names, the call's entry becomes the most specific one; a call that
        reaches it through two names and sets it through one while the other name
        keeps a different value (a more specific entry below the selected layer)
        raises ``ValueError`` naming both.

        Args:
          coefficient: finite, >= 0 (0 = the layer still gets its state updated but
            its parameters do not move).
          patterns: str or list of str.
          classes: select layers by class (see ``select_by_class``).

        Returns:
          A new ``Curriculum``.

        Raises:
          ValueError: negative, NaN or infinite coefficient; unmatched pattern;
            conflicting settings of a tied weight.
        """
        c = _check_coefficient(coefficient)
        names = self._selection(patterns, classes, "set_lr_coefficient")
        lay = self._index
        tied = lay.tied
        tied_names = {n for p, al in tied.items() for n in (p, *al)}
        entries = dict(self._entries)
        for name in names:
            if name in tied_names:
                continue  # a tied weight's leaf-level entry is set below
            if c == 1.0 and not any(q in entries for q in prefixes(name)):
                entries.pop(name, None)
            else:
                entries[name] = c
        if tied:
            _resolve.set_tied(lay, c, set(names), entries)
        return Curriculum._make(lay, self._frozen_leaves, entries)

    def _leaf_coefficient(self, path: str) -> float:
        if path in self._entries:
            return self._entries[path]
        if path in self._index.tied:
            return 1.0
        for q in reversed(prefixes(path)):
            if q in self._entries:
                return self._entries[q]
        return 1.0

    def param_groups(
        self,
        params: Any,
        lr: float,
        *,
        since: Curriculum | None = None,
        named: bool = False,
        weight_decay: float | None = None,
        weight_decay_mask: PyTree | Callable[[PyTree], PyTree] | None = None,
    ) -> list[dict[str, Any]]:
        """``torch.optim`` param groups for this curriculum.

        Frozen leaves are left out; one group per distinct coefficient (in order of
        first appearance), with ``lr = lr * coefficient``; within a group, leaves keep
        traversal order. A tied weight is one leaf, so it appears once.

        With ``weight_decay_mask`` (the same object `fc.adamw(..., weight_decay_mask=)`
        takes: True = decays) each coefficient's leaves split in two groups, the
        masked-out ones with ``"weight_decay": 0.0``: torch.optim's spelling of the
        no-decay recipe (biases and norm weights).

        Args:
          params: ``dict`` of tensors with this curriculum's structure (e.g.
            ``dict(module.named_parameters())``) or the ``nn.Module`` itself.
          lr: the base learning rate (a number or a 0-d tensor).
          since: only leaves trainable here but frozen in ``since`` (the groups to
            ``optimizer.add_param_group`` at a phase change that unfreezes them).
          named: give params as ``(name, tensor)`` pairs (torch.optim then records
            ``param_names``); every group of one optimizer must agree on this.
          weight_decay: written into every decaying group (``None``: left to the
            optimizer's default).
          weight_decay_mask: a pytree of bools like params or a callable
            ``params -> pytree`` (called on the params dict); False = no decay.

        Returns:
          A list of ``{"params": [...], "lr": ...}`` dicts (plus ``"weight_decay"``
          where set).

        Example:
          >>> import torch, funcurriculum as fc
          >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
          >>> cur = fc.Curriculum.from_module(m).set_lr_coefficient(0.1, "0")
          >>> [(len(g["params"]), g["lr"]) for g in cur.param_groups(m, 1e-2)]
          [(2, 0.001), (2, 0.01)]
          >>> opt = torch.optim.SGD(cur.param_groups(m, 1e-2))
          >>> no_bias = lambda p: {k: not k.endswith("bias") for k in p}
          >>> [g.get("weight_decay") for g in cur.param_groups(m, 1e-2, weight_decay_mask=no_bias)]
          [None, 0.0, None, 0.0]
        """
        skip = None
        if since is not None:
            if not isinstance(since, Curriculum):
                raise TypeError(f"since must be a Curriculum, got {type(since).__name__}")
            if since.paths != self.paths:
                raise ValueError(
                    "since= is a curriculum over other params: "
                    + describe_mismatch(self._index.paths, since._index.paths)
                )
            skip = [not f for f in since.frozen_leaves]
        return _groups.param_groups(
            self._index,
            params,
            lr,
            self._frozen_leaves,
            self.leaf_coefficients,
            skip,
            named=named,
            weight_decay=weight_decay,
            weight_decay_mask=weight_decay_mask,
        )

    # -- views -------------------------------------------------------------------
    @property
    def frozen_leaves(self) -> tuple[bool, ...]:
        """Per-leaf frozen flags in traversal order."""
        return self._frozen_leaves

    @property
    def leaf_coefficients(self) -> tuple[float, ...]:
        """Per-leaf coefficients in traversal order."""
        return tuple(self._leaf_coefficient(p) for p in self._index.paths)

    @property
    def masks(self) -> PyTree:
        """Dense bool pytree with the params' structure (True = trainable)."""
        return self._index.render([not f for f in self._frozen_leaves])

    @property
    def coeffs(self) -> PyTree:
        """Dense float pytree with the params' structure (effective lr = lr * coeff)."""
        return self._index.render(self.leaf_coefficients)

    @property
    def frozen(self) -> frozenset[str]:
        """Sparse frozen set: the maximal fully-frozen subtrees (layer names or leaf paths)."""
        lay = self._index
        full = {n for n in lay.nodes if all(self._frozen_leaves[i] for i in lay.leaves_under[n])}
        out = set()
        for n in full:
            parent = lay.parent(n)
            if parent is None or parent not in full:
                out.add(n)
        return frozenset(out)

    @property
    def lr_coefficients(self) -> dict[str, float]:
        """Sparse coefficient entries (name -> coefficient; absent = 1.0). A copy."""
        return dict(self._entries)

    @property
    def num_params(self) -> int:
        return sum(self._index.numels)

    @property
    def num_trainable(self) -> int:
        return sum(n for n, f in zip(self._index.numels, self._frozen_leaves) if not f)

    # -- comparison / display -------------------------------------------------------
    def _key(self) -> tuple:
        return (self._index.paths, self._frozen_leaves, self.leaf_coefficients)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Curriculum):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        n = len(self._index.paths)
        k = sum(self._frozen_leaves)
        return (
            f"Curriculum({n} leaves, {k} frozen, {self.num_trainable}/{self.num_params} params "
            f"trainable, frozen={sorted(self.frozen)}, lr_coefficients={self._entries})"
        )

    def rows(self) -> list[tuple[str, str, str, int]]:
        """(name, frozen, coefficient, #params) for every layer and top-level leaf."""
        return _table.rows(self._index, self._frozen_leaves, self.leaf_coefficients)

    def summary(self, lr: float | None = None) -> str:
        """A table: layer / leaf, frozen (yes / no / partial), coefficient, #params.

        A curriculum from ``from_module`` adds a ``class`` column, and marks tied
        weights: the leaf row lists its aliases (``tied: decoder.weight``) and an
        alias row names the leaf it shares (``= embed.weight``). `fc.summary` renders
        the same table with an ``lr`` column.

        Args:
          lr: a base learning rate: adds the ``lr`` column (``lr * coefficient``).

        Returns:
          The table as a string.
        """
        return _table.render_table(self._index, self._frozen_leaves, self.leaf_coefficients, lr)

    # -- serialisation (plain data, used by fc.save) ---------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (containers, numbers, strings) for code-free checkpoints.

        A curriculum from ``from_module`` also stores its layer classes (as
        qualified class names) and tied-weight aliases, so ``keep=`` / ``classes=``
        and ties work after loading.
        """
        out = self._index.to_dict()
        out["frozen_leaves"] = list(self._frozen_leaves)
        out["lr_coefficients"] = dict(self._entries)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Curriculum:
        """Inverse of ``to_dict``."""
        try:
            index = ParamIndex.from_dict(data)
        except ValueError as exc:
            raise ValueError(f"malformed Curriculum record: {exc}") from None
        frozen = tuple(data["frozen_leaves"])
        if not all(isinstance(b, bool) for b in frozen):
            bad = next(b for b in frozen if not isinstance(b, bool))
            raise ValueError(
                f"malformed Curriculum record: frozen_leaves holds {bad!r}, not a bool"
            )
        if len(frozen) != len(index.paths):
            raise ValueError("malformed Curriculum record: lengths disagree with the skeleton")
        entries = {str(k): _check_coefficient(v) for k, v in data["lr_coefficients"].items()}
        unknown = [k for k in entries if k not in index.leaves_under]
        if unknown:
            raise ValueError(
                f"malformed Curriculum record: coefficient entries for unknown names {unknown}"
            )
        return cls._make(index, frozen, entries)
