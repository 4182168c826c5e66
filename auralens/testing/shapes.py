"""Run-time checks of the jaxtyping shape annotations, for the test suite.

``tests/conftest.py`` installs jaxtyping's import hook with :func:`shape_checker` on the
modules whose public functions and dataclasses carry shapes (``Float[Tensor, "batch pos"]``,
``Bool[Tensor, "batch pos"]``, ...): every call into them under pytest checks each argument and
return value annotated with a jaxtyping array type (rank, dtype kind, and the named dimensions
agreeing across the arguments of one call).  Other annotations (``int``, ``Literal[...]``,
``Architecture``) are left to the library's own validation, whose errors the tests assert.

Nothing in the library imports this module; outside the tests no shape is checked.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Any, TypeVar

from beartype import beartype
from jaxtyping import AbstractArray

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["has_shape", "shape_checker"]


def has_shape(annotation: Any) -> bool:
    """Whether ``annotation`` is, or contains, a jaxtyping array type (``Float[Tensor, "b d"]``,
    ``Float[...] | None``, ``dict[str, Float[...]]``)."""

    if isinstance(annotation, type) and issubclass(annotation, AbstractArray):
        return True
    return any(has_shape(a) for a in typing.get_args(annotation))


def shape_checker(fn: F) -> F:
    """A jaxtyping ``typechecker``: beartype over the shape-carrying annotations of ``fn`` only."""

    annotations = getattr(fn, "__annotations__", None)
    if annotations:
        fn.__annotations__ = {k: v for k, v in annotations.items() if has_shape(v)}
    return beartype(fn)
