"""Fault injection for the resume tests: make one call of a function raise, as a crash would."""

from __future__ import annotations

from typing import Any


def crash_on_call(monkeypatch: Any, owner: Any, name: str, call: int = 2, message: str = "boom") -> dict[str, int]:
    """Replace ``owner.name`` (with pytest's ``monkeypatch``) by a wrapper whose ``call``-th call
    raises ``RuntimeError(message)``; every other call runs the real function.  Returns the call
    counter (``{"n": calls so far}``)."""
    real = getattr(owner, name)
    calls = {"n": 0}

    def crashing(*a: Any, **k: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == call:
            raise RuntimeError(message)
        return real(*a, **k)

    monkeypatch.setattr(owner, name, crashing)
    return calls
