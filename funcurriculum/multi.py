"""``multi_optimizer``: one optimizer per label, each leaf updated by its label's optimizer.

Every sub-optimizer sees the whole params tree with masks restricted to its own leaves
(``masks and label == its label``), so masks, coefficients, ``partition`` grads,
``donate``, ``transition``, ``vmap``, DTensor leaves and ``shard_optimizer`` work
unchanged for each, with its own lr schedule and step. State layout: one dict, a
sub-state per label (in the order of ``optimizers``)::

    {"muon": <muon's state>, "adamw": <adamw's state>}

Each sub-state has the params' structure; the leaves of other labels hold zero-size
moment buffers and a count that never advances (a few bytes per leaf). A transform
chained onto a sub-optimizer (``chain(clip_grad_norm(1.0), fc.adamw(...))``) sees its
label's leaves only, so that clipping norm is per label; a clip over every leaf wraps
the whole: ``chain(clip_grad_norm(1.0), multi_optimizer(...))``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ._masks import mask_flags
from ._select import Patterns, match_names, node_names
from ._tree import PyTree, align, close_matches, flatten, prefixes, spec_paths, unflatten
from ._validate import compiling

Labels = PyTree | Callable[[PyTree], PyTree]


def _hint(word: str, candidates: list[str]) -> str:
    near = close_matches(word, candidates)
    return f"; did you mean {near}?" if near else ""


def _label_leaves(labels: PyTree, spec: Any, paths: tuple[str, ...]) -> list[Any]:
    leaves, l_spec = flatten(labels)
    if l_spec == spec:
        return leaves
    got = spec_paths(l_spec)
    if list(got) == list(paths):
        return leaves
    missing = [p for p in paths if p not in set(got)]
    extra = [p for p in got if p not in set(paths)]
    parts = []
    if missing:
        parts.append(f"no label for {missing[:8]}")
    for p in extra[:3]:
        parts.append(f"{p!r} is not a params path{_hint(p, list(paths))}")
    if not parts:
        parts.append("same paths but a different container structure")
    raise ValueError("labels do not match the params' structure: " + "; ".join(parts))


class MultiOptimizer:
    """Per-label optimizers over one params tree.

    Built by [multi_optimizer][funcurriculum.multi_optimizer]; same ``init`` /
    ``update`` / ``transition`` interface as any optimizer.

    Attributes:
      optimizers: dict label -> optimizer, in the order their sub-states are kept.
      labels: the labels tree or callable given.

    Example:
      >>> import torch, funcurriculum as fc
      >>> opt = fc.multi_optimizer({"a": fc.sgd(0.1), "b": fc.adam(0.1)}, {"w": "a", "v": "b"})
      >>> opt.label_of({"w": torch.zeros(1), "v": torch.zeros(1)})
      ['a', 'b']
    """

    is_optimizer = True

    def __init__(self, optimizers: Mapping[str, Any], labels: Labels):
        if not isinstance(optimizers, Mapping) or not optimizers:
            raise TypeError(
                "multi_optimizer: optimizers must be a non-empty dict label -> optimizer, "
                f"got {optimizers!r}"
            )
        for name, opt in optimizers.items():
            if not isinstance(name, str):
                raise TypeError(f"multi_optimizer: label {name!r} is not a str")
            for m in ("init", "update", "transition"):
                if not callable(getattr(opt, m, None)):
                    raise TypeError(
                        f"multi_optimizer: optimizers[{name!r}] = {opt!r} has no {m!r}: "
                        "expected an optimizer (fc.adam(...), a chain, ...)"
                    )
        self.optimizers = dict(optimizers)
        self.labels = labels
        self._cache: tuple[Any, list[str]] | None = None

    def __repr__(self) -> str:
        inner = ", ".join(f"{k!r}: {v!r}" for k, v in self.optimizers.items())
        return f"multi_optimizer({{{inner}}})"

    # -- labels --------------------------------------------------------------------
    def label_of(self, params: PyTree) -> list[str]:
        """The label of each leaf of ``params``, in traversal order (validated).

        Raises:
          ValueError: the labels tree does not match ``params``, or a label is not a key
            of ``optimizers`` (naming the path and close matches).
          TypeError: a label is not a str.
        """
        _, spec = flatten(params)
        return self._labels(spec, params)

    def _labels(self, spec: Any, params: PyTree) -> list[str]:
        static = not callable(self.labels)
        cache = static and not compiling()  # optree specs cannot be compared while tracing
        if cache and self._cache is not None and self._cache[0] == spec:
            return self._cache[1]
        paths = spec_paths(spec)
        tree = self.labels if static else self.labels(params)
        out = _label_leaves(tree, spec, paths)
        names = list(self.optimizers)
        for p, lab in zip(paths, out):
            if not isinstance(lab, str):
                raise TypeError(
                    f"label at {p!r} is a {type(lab).__name__}: {lab!r}, expected a str"
                )
            if lab not in self.optimizers:
                raise ValueError(
                    f"label {lab!r} at {p!r} is not a key of optimizers {names}" + _hint(lab, names)
                )
        if cache:
            self._cache = (spec, out)
        return out

    def _split_masks(self, params: PyTree, masks: PyTree | None, what: str):
        leaves, spec = flatten(params)
        paths = spec_paths(spec)
        labels = self._labels(spec, params)
        flags = mask_flags(masks, spec, paths, what)
        sub = {
            name: unflatten(spec, [f if lab == name else False for f, lab in zip(flags, labels)])
            for name in self.optimizers
        }
        return leaves, spec, paths, labels, flags, sub

    def _sub_states(self, state: Any) -> dict[str, Any]:
        if not isinstance(state, dict):
            raise TypeError(f"state must be the dict returned by init, got {type(state).__name__}")
        names = list(self.optimizers)
        missing = [k for k in names if k not in state]
        extra = [k for k in state if k not in self.optimizers]
        if missing or extra:
            hint = _hint(str(extra[0]), names) if extra else ""
            raise ValueError(
                f"state does not match this multi_optimizer: labels {names}, missing "
                f"{missing}, unexpected {extra}{hint}: was it made by its init?"
            )
        return state

    # -- init ----------------------------------------------------------------------
    def init(self, params: PyTree, masks: PyTree | None = None) -> dict[str, Any]:
        """``{label: optimizers[label].init(params, masks restricted to the label)}``.

        Args:
          params: pytree of tensors.
          masks: optional bool pytree (True = trainable).

        Returns:
          The state dict, one sub-state per label.

        Example:
          >>> import torch, funcurriculum as fc
          >>> p = {"w": torch.zeros(2, 2), "b": torch.zeros(2)}
          >>> opt = fc.multi_optimizer({"sgd": fc.sgd(0.1), "adam": fc.adam(0.1)},
          ...                          {"w": "sgd", "b": "adam"})
          >>> s = opt.init(p)
          >>> list(s), s["adam"]["exp_avg"]["w"].shape, s["adam"]["exp_avg"]["b"].shape
          (['sgd', 'adam'], torch.Size([0]), torch.Size([2]))
        """
        *_, sub = self._split_masks(params, masks, "masks")
        return {name: opt.init(params, sub[name]) for name, opt in self.optimizers.items()}

    # -- update --------------------------------------------------------------------
    def update(
        self,
        params: PyTree,
        grads: PyTree,
        state: dict[str, Any],
        masks: PyTree | None = None,
        coeffs: PyTree | None = None,
        *,
        donate: bool = False,
        engine: str | None = None,
    ) -> tuple[PyTree, dict[str, Any]]:
        """Each label's optimizer updates its own leaves (every optimizer steps).

        Args:
          params: pytree of tensors.
          grads: same structure (``None`` allowed at frozen leaves) or a ``partition``
            part.
          state: from `init` / a previous update.
          masks: bool pytree, True = trainable; ``None`` = all trainable.
          coeffs: per-leaf LR coefficients (each optimizer multiplies its own lr).
          donate: passed to every sub-optimizer.
          engine: passed to every sub-optimizer when given (see
            `funcurriculum.Optimizer`); ``None``: each its own choice.

        Returns:
          ``(new_params, new_state)``.

        Example:
          >>> import torch, funcurriculum as fc
          >>> p = {"w": torch.ones(2), "b": torch.ones(2)}
          >>> opt = fc.multi_optimizer({"fast": fc.sgd(1.0), "slow": fc.sgd(0.1)},
          ...                          {"w": "fast", "b": "slow"})
          >>> g = {"w": torch.ones(2), "b": torch.ones(2)}
          >>> new, _ = opt.update(p, g, opt.init(p))
          >>> new["w"], new["b"]
          (tensor([0., 0.]), tensor([0.9000, 0.9000]))
        """
        state = self._sub_states(state)
        leaves, spec, paths, labels, flags, sub = self._split_masks(params, masks, "masks")
        # checks that would otherwise fail in a later sub-optimizer, after an earlier one
        # has already written donated buffers
        gs = align(grads, spec, paths, "grads", allow_missing=True)
        if coeffs is not None:
            align(coeffs, spec, paths, "coeffs")
        for p, g, f in zip(paths, gs, flags):
            if f is True and g is None:
                raise ValueError(f"grads hold no gradient for trainable leaf {p!r}")
        kw = {} if engine is None else {"engine": engine}
        out = list(leaves)
        new_state = {}
        for name, opt in self.optimizers.items():
            new_p, new_state[name] = opt.update(
                params, grads, state[name], sub[name], coeffs, donate=donate, **kw
            )
            new_leaves = flatten(new_p)[0]
            for i, lab in enumerate(labels):
                if lab == name:
                    out[i] = new_leaves[i]
        return unflatten(spec, out), new_state

    # -- transition ----------------------------------------------------------------
    def transition(
        self, state: dict[str, Any], params: PyTree, old_masks: PyTree, new_masks: PyTree
    ) -> dict[str, Any]:
        """Each label's transition with the masks restricted to its leaves.

        Args:
          state: the multi_optimizer's state.
          params: the params.
          old_masks: masks in force so far.
          new_masks: masks from now on.

        Returns:
          The new state (the input is not modified).
        """
        state = self._sub_states(state)
        *_, old = self._split_masks(params, old_masks, "old_masks")
        *_, new = self._split_masks(params, new_masks, "new_masks")
        return {
            name: opt.transition(state[name], params, old[name], new[name])
            for name, opt in self.optimizers.items()
        }


def multi_optimizer(optimizers: Mapping[str, Any], labels: Labels) -> MultiOptimizer:
    """One optimizer per label: each leaf is updated by the optimizer of its label.

    Each optimizer keeps its own state and lr schedule (they all step on every update,
    as a list of torch optimizers stepped together). Masks, coefficients,
    ``transition``, ``donate``, checkpoints, ``vmap`` and ``shard_optimizer`` work
    across the whole. The Muon recipe: ``fc.muon`` for the 2-D hidden matrices,
    ``fc.adamw`` for the rest, with labels from
    [labels_by_pattern][funcurriculum.labels_by_pattern].

    Args:
      optimizers: dict label -> optimizer (``fc.adamw(...)``, a chain, ...).
      labels: a pytree of label strings with the params' structure, or a callable
        ``params -> labels`` (called on every ``init`` / ``update`` / ``transition``).
        A label in ``optimizers`` that no leaf carries is allowed (that optimizer
        updates nothing).

    Returns:
      A [MultiOptimizer][funcurriculum.MultiOptimizer].

    Raises:
      ValueError: (at first use) a label that is not a key of ``optimizers`` or a
        labels tree that does not match the params, naming the path and close matches.

    Example:
      >>> import torch, funcurriculum as fc
      >>> p = {"layers.0.weight": torch.ones(2, 2), "layers.0.bias": torch.ones(2)}
      >>> opt = fc.multi_optimizer(
      ...     {"matrices": fc.sgd(0.1, momentum=0.9), "rest": fc.adam(0.01)},
      ...     lambda params: {k: "matrices" if v.ndim == 2 else "rest" for k, v in params.items()},
      ... )
      >>> s = opt.init(p)
      >>> sorted(s["matrices"]), sorted(s["rest"])
      (['count', 'momentum_buffer', 'step'], ['count', 'exp_avg', 'exp_avg_sq', 'step'])
    """
    return MultiOptimizer(optimizers, labels)


def labels_by_pattern(
    params: PyTree, patterns: Mapping[str, Patterns], default: str | None = None
) -> PyTree:
    """A labels tree for `multi_optimizer` from regular expressions over paths.

    Each label's patterns select as [select_layers][funcurriculum.select_layers] does
    (``re.fullmatch`` against every layer name and leaf path; a matched layer selects
    all its leaves). Every leaf must get exactly one label.

    Args:
      params: pytree of tensors.
      patterns: dict label -> a pattern or a list of patterns.
      default: the label of leaves no pattern selects (``None``: such leaves are an
        error).

    Returns:
      A pytree of label strings with the params' structure.

    Raises:
      ValueError: a pattern matches nothing (named, with close matches), a leaf is
        selected by two labels, or (no ``default``) a leaf is selected by none.

    Example:
      >>> import torch, funcurriculum as fc
      >>> p = {"embed.weight": torch.zeros(4, 2), "layers.0.weight": torch.zeros(2, 2),
      ...      "layers.0.bias": torch.zeros(2), "head.weight": torch.zeros(3, 2)}
      >>> fc.labels_by_pattern(p, {"muon": r"layers\\.\\d+\\..*weight"}, default="adamw")
      {'embed.weight': 'adamw', 'layers.0.weight': 'muon', 'layers.0.bias': 'adamw', 'head.weight': 'adamw'}
    """
    if not isinstance(patterns, Mapping) or not patterns:
        raise TypeError(f"patterns must be a non-empty dict label -> pattern(s), got {patterns!r}")
    leaves, spec = flatten(params)
    paths = spec_paths(spec)
    names = node_names(paths)
    out: list[str | None] = [None] * len(paths)
    for label, pats in patterns.items():
        if not isinstance(label, str):
            raise TypeError(f"labels_by_pattern: label {label!r} is not a str")
        hit = set(match_names(names, pats))
        for i, p in enumerate(paths):
            if p in hit or any(q in hit for q in prefixes(p)):
                if out[i] is not None:
                    raise ValueError(
                        f"labels_by_pattern: leaf {p!r} is selected by both {out[i]!r} "
                        f"and {label!r}; make the patterns disjoint"
                    )
                out[i] = label
    rest = [p for p, lab in zip(paths, out) if lab is None]
    if rest:
        if default is None:
            raise ValueError(
                f"labels_by_pattern: no pattern selects {rest[:8]}"
                + (" ..." if len(rest) > 8 else "")
                + "; add a pattern or pass default="
            )
        if not isinstance(default, str):
            raise TypeError(f"labels_by_pattern: default {default!r} is not a str")
        out = [default if lab is None else lab for lab in out]
    return unflatten(spec, out)
