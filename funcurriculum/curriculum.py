"""``Curriculum``: the immutable, sparse source of truth for freezing and LR coefficients.

The class is a thin facade; each concept lives in its own module: the names
(`param_index`), class-based selection (`_selection`), freezing with ``keep=`` and the
peft guard (`_resolve`), coefficient entries (`_coeffs`), the table (`_table`), the
``torch.optim`` bridge (`_groups`) and the plain-data record (`_curriculum_dict`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from . import _coeffs, _curriculum_dict, _groups, _resolve, _selection, _table
from ._select import Patterns
from ._tree import PyTree
from .param_index import ParamIndex


class Curriculum:
    """Which leaves are frozen and which LR coefficient each leaf gets.

    Immutable: ``freeze``, ``unfreeze`` and ``set_lr_coefficient`` return new curricula.
    The state is sparse (frozen leaves and coefficient entries, absent = 1.0); ``masks``
    and ``coeffs`` render it densely with the params' structure. Semantics are
    torch_mentor's: a selected layer freezes / unfreezes its whole subtree, later calls
    winning on the subtree they select; a leaf takes its most specific ancestor
    coefficient entry. ``frozen`` lists the maximal fully-frozen subtrees, so after
    ``freeze("backbone").unfreeze("backbone.layer4")`` it holds backbone's other children.

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
        self._init(ParamIndex.from_params(params), None, {})

    def _init(self, index: ParamIndex, frozen: Iterable[bool] | None, entries: Mapping) -> None:
        self._index = index
        self._frozen_leaves = (False,) * len(index.paths) if frozen is None else tuple(frozen)
        self._entries = dict(entries)  # last: it seals the object (see __setattr__)

    @classmethod
    def _make(cls, index: ParamIndex, frozen: Iterable[bool] | None, entries: Mapping):
        obj = cls.__new__(cls)
        obj._init(index, frozen, entries)
        return obj

    def _with(self, frozen: Iterable[bool] | None = None, entries: Mapping | None = None):
        frozen = self._frozen_leaves if frozen is None else frozen
        return self._make(self._index, frozen, self._entries if entries is None else entries)

    def __setattr__(self, name: str, value: Any) -> None:
        if hasattr(self, "_entries"):  # set once (copy / pickle restore slots one by one)
            raise AttributeError("Curriculum is immutable; use freeze/unfreeze/set_lr_coefficient")
        object.__setattr__(self, name, value)

    @classmethod
    def from_module(cls, module: torch.nn.Module) -> Curriculum:
        """A curriculum over ``dict(module.named_parameters())`` that knows layer classes
        (for ``keep=``, ``classes=`` and ``select_by_class``) and tied weights (one leaf
        under its first name; selecting any of its names acts on it).

        Args:
          module: the model (read for names, classes and sizes only).

        Returns:
          A fresh ``Curriculum`` (nothing frozen, all coefficients 1.0).

        Example:
          >>> import torch, funcurriculum as fc
          >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))
          >>> fc.Curriculum.from_module(m).freeze(".*", keep=fc.NORM_LAYERS).masks
          {'0.weight': False, '0.bias': False, '1.weight': True, '1.bias': True}
        """
        return cls._make(ParamIndex.from_module(module), None, {})

    @classmethod
    def from_requires_grad(cls, module: torch.nn.Module) -> Curriculum:
        """`from_module`, with the parameters that have ``requires_grad=False`` frozen:
        how peft models arrive (``get_peft_model`` freezes all but the adapters).

        Args:
          module: the model (read for names, classes, sizes and ``requires_grad``).

        Returns:
          A ``Curriculum`` (all coefficients 1.0) whose masks equal the flags.

        Example:
          >>> import torch, funcurriculum as fc
          >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
          >>> _ = m[0].requires_grad_(False)
          >>> fc.Curriculum.from_requires_grad(m).frozen
          frozenset({'0'})
        """
        index = ParamIndex.from_module(module)
        return cls._make(index, [not p.requires_grad for p in module.parameters()], {})

    # -- structure ---------------------------------------------------------------------
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
        """Layer names, parent before child (a tied weight's alias layers included)."""
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

    def select_by_class(self, classes: Any, under: Patterns | None = None) -> list[str]:
        """Layer names whose module is an instance of ``classes`` (subclasses included);
        warns when the model also uses a stand-in class (GPT-2's ``Conv1D`` for Linear).

        Args:
          classes: a module class, a class name (``"Linear"`` or qualified), or a tuple.
          under: optional patterns: only layers inside the subtrees they select.

        Returns:
          The matching layer names in traversal order.

        Raises:
          ValueError: not built by ``from_module``; nothing matches (naming the classes
            that are there); a pattern in ``under`` matches nothing.

        Example:
          >>> import torch, funcurriculum as fc
          >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Sequential(torch.nn.Linear(2, 2)))
          >>> fc.Curriculum.from_module(m).select_by_class(torch.nn.Linear, under="1")
          ['1.0']
        """
        return _selection.select_by_class(self._index, classes, under, stacklevel=2)

    # -- freezing ----------------------------------------------------------------------
    def freeze(
        self, patterns: Patterns | None = None, keep: Any = None, *, classes: Any = None
    ) -> Curriculum:
        """New curriculum with the selected layers' whole subtrees frozen.

        Args:
          patterns: str or list of str, ``re.fullmatch``-ed against layer names and
            leaf paths (with ``classes``: where to look; ``None`` = the whole model).
          keep: module classes (or names; ``fc.NORM_LAYERS`` for ``train_bn``) whose
            layers on the path from a selected name down to a leaf keep that leaf
            trainable. Needs ``from_module``; a keep that keeps nothing warns.
          classes: select the layers of these classes (see ``select_by_class``).

        Returns:
          A new ``Curriculum``.

        Raises:
          ValueError: unmatched pattern / class; ``keep`` / ``classes`` without
            ``from_module``; a tied weight kept through one name and frozen through
            another in this call (naming both).
        """
        names = _selection.selection(self._index, patterns, classes, "freeze")
        return self._with(_resolve.freeze(self._index, self._frozen_leaves, names, keep))

    def unfreeze(self, patterns: Patterns | None = None, *, classes: Any = None) -> Curriculum:
        """New curriculum with the selected layers' whole subtrees trainable, except the
        frozen ``original_module`` of a peft ``modules_to_save`` wrapper, unless a pattern
        spells ``original_module`` (a parent, ``".*"`` or ``classes=`` reaching it warns).

        Args:
          patterns: str or list of str (see ``freeze``).
          classes: select layers by class (see ``select_by_class``).

        Returns:
          A new ``Curriculum``.
        """
        names = _selection.selection(self._index, patterns, classes, "unfreeze")
        return self._with(_resolve.unfreeze(self._index, self._frozen_leaves, names, patterns))

    def set_frozen_leaves(self, leaves: Iterable[int], frozen: bool = True) -> Curriculum:
        """New curriculum with the leaves at these traversal indices frozen (or trainable):
        ``freeze`` / ``unfreeze`` by index (no patterns, ``keep`` or peft guard), for
        schedule rules that resolve their selection once (``cur.index.leaves_of(names)``).

        Args:
          leaves: leaf indices (positions in ``paths``).
          frozen: the flag to set.

        Returns:
          A new ``Curriculum``.

        Example:
          >>> import torch, funcurriculum as fc
          >>> fc.Curriculum({"a": torch.zeros(1), "b": torch.zeros(1)}).set_frozen_leaves([1]).masks
          {'a': True, 'b': False}
        """
        flags = _resolve.with_flags(self._frozen_leaves, leaves, frozen)
        return self._with(flags)

    # -- coefficients ------------------------------------------------------------------
    def set_lr_coefficient(
        self, coefficient: float, patterns: Patterns | None = None, *, classes: Any = None
    ) -> Curriculum:
        """New curriculum with an LR coefficient entry on each selected name.

        A leaf takes its most specific ancestor entry (its own path counts); ``1.0``
        removes an entry unless an ancestor entry would then apply. A tied weight has one
        coefficient: a call through two of its names that would give it two values
        raises (docs: modules, "Tied weights").

        Args:
          coefficient: finite, >= 0 (0: the state still advances, the params stay).
          patterns: str or list of str.
          classes: select layers by class (see ``select_by_class``).

        Returns:
          A new ``Curriculum``.

        Raises:
          ValueError: negative, NaN or infinite coefficient; unmatched pattern;
            conflicting settings of a tied weight (naming both names).
        """
        c = _coeffs.check_coefficient(coefficient)
        names = _selection.selection(self._index, patterns, classes, "set_lr_coefficient")
        return self._with(entries=_coeffs.set_entries(self._index, self._entries, c, names))

    # -- the torch.optim bridge --------------------------------------------------------
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
        """``torch.optim`` param groups: frozen leaves left out, one group per distinct
        coefficient (first-appearance order, leaves in traversal order) with ``lr = lr *
        coefficient``; a tied weight appears once. ``weight_decay_mask`` splits each group
        in a decaying one and one with ``"weight_decay": 0.0`` (the no-decay recipe).

        Args:
          params: a dict of tensors with this structure, or the ``nn.Module`` itself.
          lr: the base learning rate (a number or a 0-d tensor).
          since: only leaves trainable here but frozen in ``since`` (the groups to
            ``add_param_group`` at a phase change that unfreezes them).
          named: ``(name, tensor)`` pairs (torch.optim then records ``param_names``).
          weight_decay: written into every decaying group (``None``: the optimizer's).
          weight_decay_mask: what `fc.adamw(..., weight_decay_mask=)` takes: a pytree of
            bools like params or a callable ``params -> pytree``; False = no decay.

        Returns:
          A list of ``{"params": [...], "lr": ...}`` (``"weight_decay"`` where set).

        Example:
          >>> import torch, funcurriculum as fc
          >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
          >>> cur = fc.Curriculum.from_module(m).set_lr_coefficient(0.1, "0")
          >>> [(len(g["params"]), g["lr"]) for g in cur.param_groups(m, 1e-2)]
          [(2, 0.001), (2, 0.01)]
          >>> no_bias = lambda p: {k: not k.endswith("bias") for k in p}
          >>> [g.get("weight_decay") for g in cur.param_groups(m, 1e-2, weight_decay_mask=no_bias)]
          [None, 0.0, None, 0.0]
        """
        wd, mask = weight_decay, weight_decay_mask
        return _groups.curriculum_groups(self, params, lr, since, named, wd, mask)

    # -- views -------------------------------------------------------------------------
    @property
    def frozen_leaves(self) -> tuple[bool, ...]:
        """Per-leaf frozen flags in traversal order."""
        return self._frozen_leaves

    @property
    def leaf_coefficients(self) -> tuple[float, ...]:
        """Per-leaf coefficients in traversal order."""
        return _coeffs.leaf_coefficients(self._index, self._entries)

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
        return self._index.maximal_names(self._frozen_leaves)

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

    # -- comparison / display ----------------------------------------------------------
    def _key(self) -> tuple:
        return (self._index.paths, self._frozen_leaves, self.leaf_coefficients)

    def __eq__(self, other: object) -> bool:
        return self._key() == other._key() if isinstance(other, Curriculum) else NotImplemented

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"Curriculum({len(self._index.paths)} leaves, {sum(self._frozen_leaves)} frozen, "
            f"{self.num_trainable}/{self.num_params} params trainable, "
            f"frozen={sorted(self.frozen)}, lr_coefficients={self._entries})"
        )

    def rows(self) -> list[tuple[str, str, str, int]]:
        """(name, frozen, coefficient, #params) for every layer and leaf path."""
        return _table.rows(self._index, self._frozen_leaves, self.leaf_coefficients)

    def summary(self, lr: float | None = None) -> str:
        """A table: name, frozen (yes / no / partial), coefficient, #params; from
        ``from_module`` also the ``class`` column and tied weights marked (``tied: ...``
        on the leaf, ``= ...`` on an alias). `fc.summary` renders the same table.

        Args:
          lr: a base learning rate: adds the ``lr`` column (``lr * coefficient``).

        Returns:
          The table as a string.
        """
        return _table.render_table(self._index, self._frozen_leaves, self.leaf_coefficients, lr)

    # -- serialisation (plain data, used by fc.save) -------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (containers, numbers, strings) for code-free checkpoints; layer
        classes (qualified names) and tied-weight aliases included."""
        return _curriculum_dict.to_dict(self._index, self._frozen_leaves, self._entries)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Curriculum:
        """Inverse of ``to_dict`` (``ValueError`` for a malformed record)."""
        return cls._make(*_curriculum_dict.from_dict(data))
