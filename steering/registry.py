"""The named choices of steering: directions, modes and position rules.

Each kind is a :class:`Registry` of names with a one-line help.  The stage configs validate
their options against these registries (:meth:`Registry.check`) and the CLI shows their
choices in ``--help`` (:meth:`Registry.help`), so an entry added with :func:`register_direction`,
:func:`register_mode` or :func:`register_position` is a valid choice at once (as SAELens builds
its choices from ``register_sae_class``).

- :data:`DIRECTIONS`: how a vector's direction was made (a vector's ``method``):
  ``audio_minus_silence`` (the fitted direction) and the controls ``random_direction`` (a random
  direction of equal norm) and ``random_heads`` (the same fit at random heads).
- :data:`MODES`: how ``steer eval`` applies a vector: ``mean`` (the fitted ``v``, the same for
  every input) or ``per_input`` (``s(x)`` of each item).
- :data:`POSITIONS`: where :func:`auralens.steering.apply.apply_vector` adds the direction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from auralens.interp.errors import ConfigError

__all__ = [
    "BACKENDS",
    "DIRECTIONS",
    "MODES",
    "POSITIONS",
    "SELECTION_RULES",
    "VECTOR_FORMATS",
    "Entry",
    "Registry",
    "register_direction",
    "register_mode",
    "register_position",
]

#: the engines that can run a steered generation (identical results; torch is faster)
BACKENDS: tuple[str, ...] = ("torch", "nnsight")
#: the file formats of a steering vector and their extensions (:mod:`auralens.steering.formats`)
VECTOR_FORMATS: dict[str, str] = {"safetensors": ".safetensors", "gguf": ".gguf", "npz": ".npz"}


@dataclass(frozen=True, kw_only=True)
class Entry:
    """One registered choice: its ``name``, a one-line ``help``, whether it is a ``control`` (a
    direction that only serves as a comparison for the fitted one) and, for a mode, ``build``
    (``build(vec)`` -> what :func:`auralens.steering.evaluate.run_sweep` applies; ``None`` for the
    built-in modes, which :mod:`auralens.steering.protocol` builds)."""

    name: str
    help: str
    control: bool = False
    build: Callable[[Any], Any] | None = None


@dataclass(kw_only=True)
class Registry:
    """Named choices of one ``kind`` (the option name used in error messages), in registration order."""

    kind: str
    entries: dict[str, Entry] = field(default_factory=dict)

    def register(self, name: str, *, help: str, control: bool = False,
                 build: Callable[[Any], Any] | None = None) -> Entry:
        """Add ``name`` (a non-empty identifier not yet registered) and return its entry."""
        if not isinstance(name, str) or not name.isidentifier():
            raise ConfigError(f"{self.kind}: expected a new name that is an identifier, found {name!r}")
        if name in self.entries:
            raise ConfigError(f"{self.kind}: expected a new name, found {name!r} already registered")
        if build is not None and not callable(build):
            raise ConfigError(f"{self.kind} {name!r}: expected a callable build or None, found {build!r}")
        entry = Entry(name=name, help=str(help), control=bool(control), build=build)
        self.entries[name] = entry
        return entry

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self.entries)

    def __contains__(self, name: Any) -> bool:
        return name in self.entries

    def check(self, value: Any, *, option: str | None = None) -> str:
        """``value`` if it is a registered name, else ConfigError naming ``option`` and the choices."""
        if not isinstance(value, str) or value not in self.entries:
            raise ConfigError(f"{option or self.kind}: expected one of {list(self.entries)}, found {value!r}")
        return value

    def check_distinct(self, values: Iterable[Any], *, option: str | None = None) -> tuple[str, ...]:
        """``values`` as a tuple if they are distinct registered names (at least one), else ConfigError."""
        vals = tuple(values) if isinstance(values, (tuple, list)) else values
        if (not isinstance(vals, tuple) or not vals or len(set(vals)) != len(vals)
                or any(v not in self.entries for v in vals)):
            raise ConfigError(f"{option or self.kind}: expected distinct values among {list(self.entries)}, "
                              f"found {values!r}")
        return vals

    def controls(self) -> tuple[str, ...]:
        """The names registered as controls."""
        return tuple(n for n, e in self.entries.items() if e.control)

    def help(self) -> str:
        """``name (help) | name (help) ...`` for a CLI flag's help text."""
        return " | ".join(f"{e.name} ({e.help})" if e.help else e.name for e in self.entries.values())


DIRECTIONS = Registry(kind="method")
MODES = Registry(kind="modes")
POSITIONS = Registry(kind="positions")


def register_direction(name: str, *, help: str, control: bool = False) -> Entry:
    """Register a way of making a direction (a vector ``method``); ``control``: a comparison direction."""
    return DIRECTIONS.register(name, help=help, control=control)


def register_mode(name: str, *, help: str, build: Callable[[Any], Any]) -> Entry:
    """Register a way for ``steer eval`` to apply a vector: ``build(vec)`` returns what the sweep
    applies (a SteeringVector or a :class:`~auralens.steering.evaluate.PerInput`)."""
    return MODES.register(name, help=help, build=build)


def register_position(name: str, *, help: str) -> Entry:
    """Register a position rule of :func:`auralens.steering.apply.apply_vector`."""
    return POSITIONS.register(name, help=help)


register_direction("audio_minus_silence", help="mean of h(audio) - h(silence) over the fit items")
register_direction("random_direction", help="control: a random direction of equal norm", control=True)
register_direction("random_heads", help="control: the same fit at random heads", control=True)
MODES.register("mean", help="the fitted v")
MODES.register("per_input", help="s(x) per item")
register_position("last_prompt", help="")
register_position("generated", help="")
register_position("both", help="")
register_position("answer", help="the generated tokens from the one after 'answer :' on")
register_position("all", help="every position, the prompt's included (what a llama.cpp control vector does)")


#: the rules ``steer eval`` may choose its setting on dev by (:func:`auralens.steering.nulls.choose_on_dev`)
SELECTION_RULES: dict[str, str] = {
    "ci_low": ("beta = 0 (no steering, dev gain 0 by construction) is a candidate; the nonzero setting with the "
               "largest dev gain (ties: smaller |beta|, then lower layer) is kept only if the lower bound of its 95% "
               "paired-bootstrap CI over the dev items is > 0, else steering is declined (beta = 0, the unsteered "
               "model)"),
    "best": ("the nonzero setting with the largest dev gain (ties: smaller |beta|, then lower layer), whatever its "
             "sign (cannot decline)"),
}
