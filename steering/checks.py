"""What a steering fit names, parsed and checked before any model is touched: the fit
positions (:func:`parse_positions`), the specialist heads (:func:`parse_heads`, :func:`check_heads`),
the decoder layers (:func:`check_layers`) and the site (:func:`check_site`).  Light: numpy only
(pandas when a heads table is read, the vector module when a site is checked).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from auralens.interp.errors import ConfigError

__all__ = ["METHODS", "NORMALIZATIONS", "POSITIONS", "SITES", "Position", "check_heads", "check_layers",
           "check_site", "parse_heads", "parse_positions"]

POSITIONS: tuple[str, ...] = ("last_prompt", "audio_mean")
NORMALIZATIONS: tuple[str, ...] = ("none", "unit", "resid_norm")
SITES: tuple[str, ...] = ("hook_resid_post", "attn.hook_z")
#: the built-in direction methods (:data:`auralens.steering.registry.DIRECTIONS` may hold more)
METHODS: tuple[str, ...] = ("audio_minus_silence", "random_direction", "random_heads")

Position = str | int


def parse_positions(positions: Position | Sequence[Position]) -> tuple[Position, ...]:
    """``"last_prompt"``, ``"audio_mean"``, an int, ``"-3"``, or a comma-separated / sequence mix."""
    if isinstance(positions, bool):
        raise ConfigError(f"positions: expected 'last_prompt', 'audio_mean' or an int, found {positions!r}")
    if isinstance(positions, (int, np.integer)):
        return (int(positions),)
    if isinstance(positions, str):
        parts: list[Any] = [p.strip() for p in positions.split(",") if p.strip()]
    elif isinstance(positions, Sequence):
        parts = list(positions)
    else:
        raise ConfigError(f"positions: expected a name, an int or a list of them, found {positions!r}")
    out: list[Position] = []
    for p in parts:
        if isinstance(p, bool):
            raise ConfigError(f"positions: expected 'last_prompt', 'audio_mean' or an int, found {p!r}")
        if isinstance(p, (int, np.integer)):
            out.append(int(p))
        elif isinstance(p, str) and p in POSITIONS:
            out.append(p)
        elif isinstance(p, str) and p.lstrip("-").isdigit():
            out.append(int(p))
        else:
            raise ConfigError(
                f"positions: expected {list(POSITIONS)} or an integer token index, found {p!r}"
            )
    if not out:
        raise ConfigError("positions: expected at least one position, found none")
    if len(set(out)) != len(out):
        raise ConfigError(f"positions: expected distinct positions, found {out}")
    return tuple(out)


def parse_heads(heads: Any, *, k: int | None = None) -> tuple[tuple[int, int], ...]:
    """Heads as (layer, head) pairs from pairs, ``"L:H,L:H"``, or a heads table.

    A heads table is a DataFrame or a parquet file with ``layer``, ``head`` (and a ``rank``
    column, as :func:`auralens.interp.listening.heads_table` writes; without one the row order is the
    rank); a run folder holding ``heads.parquet`` is read the same way.  ``k`` keeps the
    first ``k`` heads (by rank).
    """
    if heads is None:
        return ()
    pairs: list[tuple[int, int]]
    if isinstance(heads, (str, Path)) and (Path(heads).suffix == ".parquet" or Path(heads).is_dir()):
        import pandas as pd

        path = Path(heads)
        if path.is_dir():
            path = path / "heads.parquet"
        if not path.exists():
            raise ConfigError(f"heads: expected a heads table at {str(path)!r}, found no file")
        heads = pd.read_parquet(path)
    if hasattr(heads, "columns"):  # a DataFrame
        missing = {"layer", "head"} - set(heads.columns)
        if missing:
            raise ConfigError(f"heads table: expected columns 'layer' and 'head', found {list(heads.columns)}")
        table = heads.sort_values("rank") if "rank" in heads.columns else heads
        pairs = [(int(r.layer), int(r.head)) for r in table.itertuples()]
    elif isinstance(heads, str):
        pairs = []
        for part in heads.split(","):
            part = part.strip()
            if not part:
                continue
            bits = part.split(":")
            if len(bits) != 2 or not all(b.strip().isdigit() for b in bits):
                raise ConfigError(f"heads: expected 'layer:head' pairs such as '3:1,5:0', found {part!r}")
            pairs.append((int(bits[0]), int(bits[1])))
    elif isinstance(heads, Iterable):
        pairs = []
        for pair in heads:
            if isinstance(pair, (str, bytes)) or not isinstance(pair, Iterable) or len(tuple(pair)) != 2:
                raise ConfigError(f"heads: expected (layer, head) pairs, found {pair!r}")
            a, b = tuple(pair)
            if isinstance(a, bool) or isinstance(b, bool) or not isinstance(a, (int, np.integer)) or not isinstance(b, (int, np.integer)):
                raise ConfigError(f"heads: expected integer (layer, head) pairs, found {pair!r}")
            pairs.append((int(a), int(b)))
    else:
        raise ConfigError(f"heads: expected (layer, head) pairs, 'L:H,...' or a heads table, found {heads!r}")
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ConfigError(f"k: expected a positive number of heads, found {k!r}")
        pairs = pairs[: int(k)]
    if len(set(pairs)) != len(pairs):
        raise ConfigError(f"heads: expected distinct (layer, head) pairs, found {pairs}")
    return tuple(pairs)


def check_heads(arch, heads: Sequence[tuple[int, int]]) -> None:
    """Every (layer, head) of ``heads`` exists in ``arch``, else ConfigError naming the bad ones."""
    bad = [h for h in heads if not (0 <= h[0] < arch.n_layers and 0 <= h[1] < arch.n_heads)]
    if bad:
        raise ConfigError(
            f"heads: {arch.name} has {arch.n_layers} layers x {arch.n_heads} heads, found {bad}"
        )


def check_layers(arch, layers: Iterable[int]) -> tuple[int, ...]:
    """``layers`` as sorted distinct decoder layers of ``arch`` (at least one), else ConfigError."""
    out = []
    for L in layers:
        if isinstance(L, bool) or not isinstance(L, (int, np.integer)):
            raise ConfigError(f"layers: expected integer decoder layers, found {L!r}")
        if not 0 <= int(L) < arch.n_layers:
            raise ConfigError(
                f"layers: decoder layer {int(L)} out of range: {arch.name} has {arch.n_layers} layers "
                f"(0..{arch.n_layers - 1})"
            )
        out.append(int(L))
    if not out:
        raise ConfigError("layers: expected at least one decoder layer, found none")
    if len(set(out)) != len(out):
        raise ConfigError(f"layers: expected distinct layers, found {out}")
    return tuple(sorted(out))


def check_site(site: str) -> str:
    """The hook name of a steering ``site`` (one of :data:`SITES`, any layer-free spelling
    :func:`auralens.steering.vector.normalize_site` reads), else ConfigError."""
    from auralens.steering.vector import normalize_site  # torch at module level

    pattern, layer = normalize_site(site)
    hook = pattern.removeprefix("lm.blocks.{L}.")
    if layer is not None or hook not in SITES:
        raise ConfigError(f"site: expected one of {list(SITES)}, found {site!r}")
    return hook
