"""One capture engine: values at canonical sites of one forward pass, read with torch hooks.

Every reader of the residual stream (probe collection, steering-vector fitting) goes through
:func:`capture`; every writer (steering) and reader installs its hooks through
:func:`site_hooks`, a context manager that removes them whatever happens in the block.  Sites
are the TransformerLens-style names of :mod:`auralens.interp.arch`, resolved there
(:meth:`~auralens.interp.arch.Architecture.hook_point`) and nowhere else.

Reduction inside the hook: with ``weights={site: W}`` only ``W @ value`` is kept (``W``:
``[batch, slot, pos]`` gives ``[batch, slot, width]``, ``[batch, pos]`` gives
``[batch, width]``; ``W`` may also be a function of the value returning the weights, for sites
whose length is only known when they run), so a long prompt never materialises
``[batch, pos, width]`` for every layer at once.  The forward stops after the last site it
needs (``stop_early``), so nothing after the deepest requested layer is computed.

Capture hooks are put *before* any other hook on the same module (``prepend``): with a
steering hook registered on decoder layer ``L``, ``lm.blocks.{L}.hook_resid_post`` here is the
unsteered output of layer ``L``, while layers after ``L`` see the steered stream.

Left padding: the processor left-pads; :func:`with_position_ids` adds the ``position_ids``
``generate`` would use (counted over real tokens), so a row's values do not depend on what
else is in its batch -- except for architectures that derive their own (3-D, multimodal) rotary
positions from the attention mask (:attr:`auralens.interp.arch.ArchTable.own_position_ids`), which must
not be given 1-D ones.

Stop tokens: :func:`stop_ids` and :func:`trim_at_stop` cut a generation at its first
end-of-turn (or padding) token, the same way for every caller.

Public API: :class:`SiteShapeError`, :func:`capture`, :func:`site_hooks`,
:func:`position_ids`, :func:`with_position_ids`, :func:`stop_ids`, :func:`trim_at_stop`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from auralens.interp.arch import get_attr_path
from auralens.interp.errors import ArchitectureError, ConfigError

__all__ = [
    "SiteShapeError",
    "capture",
    "position_ids",
    "site_hooks",
    "stop_ids",
    "trim_at_stop",
    "with_position_ids",
]


class SiteShapeError(ArchitectureError):
    """A site's value is not ``[batch, pos, width]`` with the inputs' batch size (e.g. an audio
    encoder that batches by window rather than by item), so it cannot be reduced per row."""


# --------------------------------------------------------------------------------------------
# Positions and stop tokens
# --------------------------------------------------------------------------------------------


def position_ids(attention_mask):
    """Positions counted over real tokens only (what ``generate`` uses with left padding)."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 0)


def with_position_ids(arch, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """``inputs`` plus ``position_ids`` from their attention mask, unless the architecture
    derives its own rotary positions (then ``inputs`` unchanged, as a new dict)."""
    out = dict(inputs)
    if not arch.table.own_position_ids:
        out["position_ids"] = position_ids(out["attention_mask"])
    return out


def _ids_of(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, (list, tuple, set, frozenset)):
        return [int(v) for v in value if v is not None]
    return [int(value)]


def stop_ids(lm, *, pad: bool = True) -> set[int]:
    """End-of-turn token ids of ``lm`` (generation config and tokenizer), with the padding ids
    too when ``pad``."""
    attrs = ("eos_token_id", "pad_token_id") if pad else ("eos_token_id",)
    out: set[int] = set()
    for source in (getattr(lm.model, "generation_config", None), lm.tokenizer):
        for attr in attrs:
            out.update(_ids_of(getattr(source, attr, None)))
    return out


def trim_at_stop(
    ids: Iterable[int] | Any, stop: Iterable[int], *, inclusive: bool = False, pad_id: int | None = None
) -> list[int]:
    """The tokens of one generated row before its first token in ``stop`` (with that token when
    ``inclusive``).  ``pad_id``, when given, also ends the row (never kept) anywhere but at its
    first position: right padding after a row that stopped early.  ``ids`` may be a tensor."""
    seq = ids.tolist() if hasattr(ids, "tolist") else list(ids)
    stop = {int(s) for s in stop}
    for i, t in enumerate(seq):
        t = int(t)
        if t in stop:
            return [int(x) for x in seq[: i + 1 if inclusive else i]]
        if pad_id is not None and t == pad_id and i > 0:
            return [int(x) for x in seq[:i]]
    return [int(x) for x in seq]


# --------------------------------------------------------------------------------------------
# Hooks
# --------------------------------------------------------------------------------------------


Hook = Callable[[Any], Any]  # value -> replacement, or None (or the value itself) to keep it


@contextlib.contextmanager
def site_hooks(model, hooks: Sequence[tuple[Any, Hook]], *, prepend: bool = False) -> Iterator[None]:
    """Within the block, ``fn(value)`` runs at every ``(point, fn)`` of ``hooks``.

    ``point`` is an :class:`auralens.interp.arch.HookPoint`: ``fn`` gets its module's output (first
    element of a tuple output) or input (first positional argument, else ``hidden_states`` or
    the first keyword argument) and may return a replacement.  ``prepend`` puts the hooks
    before the module's existing ones.  Every hook is removed on exit, also when the block (or
    installing a later hook) raises."""

    handles = []
    try:
        for point, fn in hooks:
            module = get_attr_path(model, point.path)
            if point.kind == "output":

                def hook(module, args, output, fn=fn):
                    h = output[0] if isinstance(output, tuple) else output
                    new = fn(h)
                    if new is None or new is h:
                        return None
                    return (new, *output[1:]) if isinstance(output, tuple) else new

                handles.append(module.register_forward_hook(hook, prepend=prepend))
            else:

                def pre_hook(module, args, kwargs, fn=fn):
                    if args:
                        new = fn(args[0])
                        return None if new is None or new is args[0] else ((new, *args[1:]), kwargs)
                    key = "hidden_states" if "hidden_states" in kwargs else next(iter(kwargs))
                    new = fn(kwargs[key])
                    return None if new is None or new is kwargs[key] else (args, {**kwargs, key: new})

                handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True, prepend=prepend))
        yield
    finally:
        for h in handles:
            h.remove()


# --------------------------------------------------------------------------------------------
# Capture
# --------------------------------------------------------------------------------------------


class _Stop(Exception):
    """Raised by the hook of the last site needed: nothing after it is computed."""


def capture(
    lm,
    inputs: Mapping[str, Any],
    sites: Sequence[str],
    *,
    weights: Mapping[str, Any] | None = None,
    stop_early: bool = True,
) -> dict[str, Any]:
    """One forward of ``lm.model`` over ``inputs``; the value at every site (float32).

    Without weights for a site its value is the full ``[batch, pos, width]``; with
    ``weights[site]`` it is the reduction described in the module docstring.  ``inputs`` are
    passed as given (see :func:`with_position_ids` for left-padded batches); the forward runs
    under ``torch.inference_mode()`` without a KV cache.  Results stay on the model's device.

    Errors: an unknown site or layer out of range (:class:`ArchitectureError`, before the
    forward); a site whose value is not ``[batch, pos, width]`` (:class:`SiteShapeError`
    naming it); a site whose hook never ran (:class:`ArchitectureError`: the table does not
    match the model).
    """
    import torch

    points = lm.arch.hook_points(sites)
    if not points:
        raise ConfigError("sites: expected at least one site to capture, found none")
    weights = dict(weights or {})
    unknown = sorted(set(weights) - {p.site for p in points})
    if unknown:
        raise ConfigError(f"weights: expected weights only for captured sites, found {unknown}")
    batch = int(inputs["input_ids"].shape[0])
    last = points[-1].site
    got: dict[str, Any] = {}
    shapes: dict[str, tuple[int, ...]] = {}

    def reader(site: str) -> Hook:
        def read(value):
            shapes[site] = tuple(value.shape)
            if value.ndim == 3 and value.shape[0] == batch:
                w = weights.get(site)
                if w is None:
                    got[site] = value.detach().to(torch.float32, copy=True)
                else:
                    v = value.float()
                    w = (w(v) if callable(w) else w).to(device=v.device, dtype=torch.float32)
                    got[site] = torch.bmm(w, v) if w.ndim == 3 else torch.einsum("bp,bpd->bd", w, v)
            if stop_early and site == last:
                raise _Stop
            return None

        return read

    with torch.inference_mode(), site_hooks(lm.model, [(p, reader(p.site)) for p in points], prepend=True):
        try:
            lm.model(**inputs, use_cache=False)
        except _Stop:
            pass
    bad = {p.site: shapes[p.site] for p in points if p.site in shapes and p.site not in got}
    if bad:
        raise SiteShapeError(
            f"{lm.arch.name}: expected [batch={batch}, pos, width] values at every site, found "
            + ", ".join(f"{s}: {v}" for s, v in bad.items())
        )
    missing = [p.site for p in points if p.site not in got]
    if missing:
        raise ArchitectureError(
            f"capture: expected values at {[p.site for p in points]}, found none at {missing}; "
            f"the architecture table of {lm.arch.name} may not match the model"
        )
    return got
