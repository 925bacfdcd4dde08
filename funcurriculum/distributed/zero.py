"""ZeRO-1: optimizer state sharded over ranks by leaf, params re-synced after each update."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from .._tree import PyTree, align, flatten, spec_paths, unflatten
from .._validate import has_dtensor as _has_dtensor
from .._validate import mask_value as _mask_value
from ..engines import keep_flag as _keep_flag
from ..optimizer import Optimizer, _empty
from ._check import agree, checksum, global_rank, require_group
from .grads import DEFAULT_BUCKET_MB, buckets, pack, unpack

Tensor = torch.Tensor


def owners(numels: list[int], trainable: list[bool], world: int) -> list[int]:
    """Which rank owns each leaf (``-1`` for frozen leaves).

    Largest leaves first, each to the least-loaded rank (lowest rank on ties), as
    ``ZeroRedundancyOptimizer`` does; leaves are never split, so a rank may own nothing.
    Deterministic: every rank computes the same answer from the same inputs.

    Example:
      >>> from funcurriculum.distributed.zero import owners
      >>> owners([10, 3, 4, 5], [True, True, False, True], 2)
      [0, 1, -1, 1]
    """
    own = [-1] * len(numels)
    load = [0] * world
    for i in sorted((i for i, t in enumerate(trainable) if t), key=lambda i: (-numels[i], i)):
        r = min(range(world), key=lambda r: (load[r], r))
        own[i] = r
        load[r] += numels[i]
    return own


def _coeff_digest(coeffs: PyTree | None, spec, paths, flags) -> int:
    """Checksum of the trainable leaves' coefficients (their values, read on the host)."""
    if coeffs is None:
        return 0
    keys = []
    for c, f in zip(align(coeffs, spec, paths, "coeffs"), flags):
        if not f:
            keys.append("-")
        elif isinstance(c, torch.Tensor) and c.numel() == 1:
            keys.append(repr(float(c)))
        elif isinstance(c, torch.Tensor):
            keys.append(f"tensor{tuple(c.shape)}")
        else:
            keys.append(repr(float(c)))
    return checksum(paths, keys, [None] * len(paths), extra="zero.coeffs")


def _flags(masks: PyTree | None, spec, paths, what: str) -> list[bool]:
    if masks is None:
        return [True] * len(paths)
    return [_mask_value(m, p) for m, p in zip(align(masks, spec, paths, what), paths)]


class ShardedOptimizer:
    """An optimizer whose state is sharded over ranks (ZeRO stage 1).

    Made by ``shard_optimizer``; same ``init`` / ``update`` / ``transition``
    interface and state layout as the wrapped optimizer, except that moment buffers
    of leaves this rank does not own are zero-size. Per-leaf counts and the global
    step are kept on every rank (they are tiny), so they equal the unsharded ones.
    """

    is_optimizer = True

    def __init__(self, opt: Optimizer, group: Any = None, bucket_cap_mb: float = DEFAULT_BUCKET_MB):
        if not isinstance(opt, Optimizer):
            raise TypeError(
                "shard_optimizer expects a funcurriculum optimizer (fc.Optimizer, a chain or "
                f"a multi_optimizer), got {opt!r}"
            )
        self.opt = opt
        self.group = group
        self.bucket_cap_mb = bucket_cap_mb

    def __repr__(self) -> str:
        return f"shard_optimizer({self.opt!r})"

    # -- ownership ---------------------------------------------------------------------
    def owners(self, params: PyTree, masks: PyTree | None = None) -> PyTree:
        """Pytree like ``params``: the rank owning each leaf (``-1`` if frozen)."""
        leaves, spec = flatten(params)
        paths = spec_paths(spec)
        world, _ = require_group(self.group, "shard_optimizer")
        flags = _flags(masks, spec, paths, "masks")
        return unflatten(spec, owners([x.numel() for x in leaves], flags, world))

    def _plan(self, params, masks, who):
        world, rank = require_group(self.group, who)
        leaves, spec = flatten(params)
        paths = spec_paths(spec)
        for p, x in zip(paths, leaves):
            if _has_dtensor([x]):
                raise TypeError(
                    f"shard_optimizer: params leaf {p!r} is a DTensor; DTensor leaves are "
                    "already sharded, use the plain optimizer on them"
                )
        flags = _flags(masks, spec, paths, "masks")
        own = owners([x.numel() for x in leaves], flags, world)
        return world, rank, leaves, spec, paths, flags, own

    # -- init --------------------------------------------------------------------------
    def init(self, params: PyTree, masks: PyTree | None = None) -> dict[str, Any]:
        """State with moment buffers only for the trainable leaves this rank owns.

        Args:
          params: pytree of tensors (identical on every rank).
          masks: bool pytree, True = trainable (``None``: all).

        Returns:
          The wrapped optimizer's state layout (no communication happens).
        """
        _, rank, _, spec, _, _, own = self._plan(params, masks, "shard_optimizer.init")
        return self.opt.init(params, unflatten(spec, [o == rank for o in own]))

    # -- update ------------------------------------------------------------------------
    def update(
        self,
        params: PyTree,
        grads: PyTree,
        state: dict[str, Any],
        masks: PyTree | None = None,
        coeffs: PyTree | None = None,
        *,
        donate: bool = False,
    ) -> tuple[PyTree, dict[str, Any]]:
        """Update the owned leaves, then broadcast them in buckets so all ranks agree.

        ``grads`` must already be averaged over ranks (`all_reduce_grads`). The
        result equals the unsharded optimizer's on every rank. Frozen leaves are neither
        updated nor communicated. Before anything is written, the ranks check that they
        agree on the tree, the masks and the coefficients of the trainable leaves (each
        rank applies its own coefficients to the leaves it owns, so a disagreement would
        silently mix them): a mismatch raises ``ValueError`` on every rank.

        Args:
          params: pytree of tensors, identical on every rank.
          grads: the averaged grads (``None`` at frozen leaves allowed, or a
            ``partition`` part).
          state: this rank's sharded state (from `init` / a previous update).
          masks: bool pytree, True = trainable (``None``: all), identical on every rank.
          coeffs: per-leaf LR coefficients (``None``: all 1), identical on every rank.
          donate: update this rank's buffers in place (see `funcurriculum.Optimizer`).

        Returns:
          ``(new_params, new_state)``, identical params on every rank.
        """
        who = "shard_optimizer.update"
        world, rank, leaves, spec, paths, flags, own = self._plan(params, masks, who)
        error: BaseException | None = None
        coef_digest = 0
        try:
            coef_digest = _coeff_digest(coeffs, spec, paths, flags)
        except (TypeError, ValueError) as exc:
            error = exc
        digest = checksum(paths, flags, leaves, extra="zero.update")
        agree(
            self.group, who, digest, (sum(flags), 0), error, parts=[("coefficients", coef_digest)]
        )
        try:
            mine = unflatten(spec, [o == rank for o in own])
            new_params, new_state = self.opt.update(
                params, grads, state, mine, coeffs, donate=donate
            )
        except (TypeError, ValueError, RuntimeError) as exc:
            error = exc
        agree(self.group, who, 0, (), error)

        new_leaves = flatten(new_params)[0]
        counts = list(align(new_state["count"], spec, paths, "state['count']"))
        with torch.no_grad():  # counts of leaves owned elsewhere advance too (replicated)
            for i, o in enumerate(own):
                if o >= 0 and o != rank:
                    counts[i] = counts[i].add_(1) if donate else counts[i] + 1
        new_state["count"] = unflatten(spec, counts)
        self._sync(new_leaves, leaves, own, rank, world, donate)
        return unflatten(spec, new_leaves), new_state

    def _sync(self, new_leaves, old_leaves, own, rank, world, donate) -> None:
        pending = []
        for r in range(world):
            idx = [i for i, o in enumerate(own) if o == r]
            for b in buckets(idx, old_leaves, self.bucket_cap_mb * 2**20):
                if r == rank:
                    flat = pack([new_leaves[i] for i in b])
                else:
                    numel = sum(old_leaves[i].numel() for i in b)
                    ref = old_leaves[b[0]]
                    flat = torch.empty(numel, dtype=ref.dtype, device=ref.device)
                src = global_rank(self.group, r)
                work = dist.broadcast(flat, src=src, group=self.group, async_op=True)
                pending.append((r, b, flat, work))
        for r, b, flat, work in pending:
            work.wait()
            if r == rank:
                continue
            with torch.no_grad():
                for i, v in zip(b, unpack(flat, [old_leaves[i] for i in b])):
                    old = old_leaves[i]
                    if donate:
                        new_leaves[i] = old.copy_(v)
                    else:
                        new_leaves[i] = _keep_flag(v.clone() if old.requires_grad else v, old)

    # -- transition --------------------------------------------------------------------
    def transition(
        self, state: dict[str, Any], params: PyTree, old_masks: PyTree, new_masks: PyTree
    ) -> dict[str, Any]:
        """Rebalance ownership for ``new_masks``; just-activated leaves start fresh.

        Ownership is recomputed from ``new_masks``. A leaf trainable before and after
        whose owner changes has its moment buffers sent from the old owner to the new
        one (point-to-point); leaves frozen in ``old_masks`` and trainable in
        ``new_masks`` get fresh state on their owner (count 0 on every rank); buffers a
        rank no longer owns (moved away or just frozen) are released. The global step
        goes on.

        Returns:
          The new state (the input is not modified).
        """
        who = "shard_optimizer.transition"
        world, rank, leaves, spec, paths, new, new_own = self._plan(params, new_masks, who)
        error: BaseException | None = None
        try:
            old = _flags(old_masks, spec, paths, "old_masks")
            old_own = owners([x.numel() for x in leaves], old, world)
            self.opt._check_state(state)
            counts = list(align(state["count"], spec, paths, "state['count']"))
            fields = self.opt.rule.fields
            cols = [list(align(state[f], spec, paths, f"state[{f!r}]")) for f in fields]
        except (TypeError, ValueError) as exc:
            error, old = exc, new
        digest = checksum(
            paths, [f"{a}{b}" for a, b in zip(old, new)], leaves, extra="zero.transition"
        )
        agree(self.group, who, digest, (sum(new), 0), error)

        for i, p in enumerate(leaves):
            o_old, o_new = old_own[i], new_own[i]
            if new[i] and not old[i]:
                counts[i] = torch.zeros_like(counts[i])
                fresh = self.opt.rule.init(p) if o_new == rank else [_empty(p) for _ in fields]
                for c, b in zip(cols, fresh):
                    c[i] = b
            elif new[i] and old[i] and o_old != o_new:
                if rank == o_old:
                    for c in cols:
                        dist.send(
                            c[i].contiguous(), dst=global_rank(self.group, o_new), group=self.group
                        )
                        c[i] = _empty(p)
                elif rank == o_new:
                    # buffers shaped as the rule makes them (not always like the leaf:
                    # Adafactor's factored moments, NAdam's 0-d mu_product)
                    for c, like in zip(cols, self.opt.rule.init(p)):
                        buf = torch.empty_like(like, memory_format=torch.contiguous_format)
                        dist.recv(buf, src=global_rank(self.group, o_old), group=self.group)
                        c[i] = buf
            elif not new[i] and old[i] and o_old == rank:
                for c in cols:
                    c[i] = _empty(p)
        out = dict(state)
        out["count"] = unflatten(spec, counts)
        for f, c in zip(fields, cols):
            out[f] = unflatten(spec, c)
        return out


def shard_optimizer(
    opt: Any, group: Any = None, *, bucket_cap_mb: float = DEFAULT_BUCKET_MB
) -> Any:
    """Shard ``opt``'s state over the ranks of ``group`` (ZeRO stage 1).

    Each rank owns a share of the trainable leaves, balanced by element count (largest
    first to the least-loaded rank; leaves are never split, so a rank may own nothing);
    it holds moment buffers only for those and updates only those, then every rank
    broadcasts its updated leaves in buckets so all ranks end with identical params,
    equal to what ``opt`` gives unsharded. Frozen leaves are never broadcast.

    Any optimizer of ours can be sharded:

    * an optimizer (``fc.adam(...)``, any ``fc.Optimizer``): a `ShardedOptimizer`;
    * a [chain][funcurriculum.chain]: the same chain around the sharded optimizer. The
      transforms run replicated on every rank with the full masks (the grads are
      already averaged, so every rank computes the same clipping norm and the same
      skip decision) and their state entries stay replicated;
    * a [multi_optimizer][funcurriculum.multi_optimizer]: each label's optimizer is
      sharded on its own (ownership balanced within each label).

    Args:
      opt: a funcurriculum optimizer, chain or multi_optimizer.
      group: the process group (default: the world).
      bucket_cap_mb: size cap of the broadcast buckets, in MiB.

    Returns:
      An optimizer with ``init`` / ``update`` / ``transition`` (a `ShardedOptimizer`,
      or a chain / multi_optimizer of them).

    Raises:
      TypeError: ``opt`` is not an optimizer of ours, or is already sharded.

    Example:
      >>> import funcurriculum as fc, funcurriculum.distributed as fcd
      >>> sharded = fcd.shard_optimizer(fc.adam(1e-3))  # needs init_process_group first
      >>> sharded
      shard_optimizer(adam(lr=0.001, AdamRule(beta1=0.9, beta2=0.999, eps=1e-08, weight_decay=0.0, decoupled=False, amsgrad=False)))
      >>> fcd.shard_optimizer(fc.with_clipping(fc.sgd(0.1), 1.0))
      chain(clip_grad_norm(1.0), shard_optimizer(sgd(lr=0.1, SGDRule(momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0))))
    """
    from ..chain import Chain, chain
    from ..multi import MultiOptimizer

    if isinstance(opt, Chain):
        return chain(*opt.transforms, shard_optimizer(opt.opt, group, bucket_cap_mb=bucket_cap_mb))
    if isinstance(opt, MultiOptimizer):
        subs = {
            k: shard_optimizer(v, group, bucket_cap_mb=bucket_cap_mb)
            for k, v in opt.optimizers.items()
        }
        return MultiOptimizer(subs, opt.labels)
    if isinstance(opt, ShardedOptimizer):
        raise TypeError(f"shard_optimizer: {opt!r} is already sharded")
    return ShardedOptimizer(opt, group, bucket_cap_mb)
