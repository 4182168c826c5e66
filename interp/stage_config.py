"""Stage configs: one keyword-only, frozen, validated dataclass per stage (SAELens-style).

A stage's config holds every option with its default and a one-line help, declared with
:func:`option`; ``__post_init__`` validates them with the :mod:`auralens.interp.runs` ``check_*`` helpers
(a :class:`~auralens.interp.errors.ConfigError` names the option, the expected and the found value), so a
bad option fails before anything is read or written.  From the same fields come

- the run's identity: :meth:`StageConfig.identity` (the manifest ``config`` dict: every field
  whose ``identity`` is not ``False``) and :meth:`StageConfig.manifest` (plus ``command``,
  ``model``, ``data``, ``seed``, ``n``), which ``--resume`` compares;
- the command line: ``auralens.cli`` turns each field into ``--kebab-name`` with its default and
  help (``flag``, ``short``, ``parse``, ``cli`` in the field's metadata refine that);
- the keyword call style: :func:`takes_config` lets ``stage(cfg, lm=...)`` and
  ``stage(model=..., n=..., lm=...)`` both work (the keywords build the config).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from typing import Any, ClassVar

from auralens.interp.errors import ConfigError

__all__ = ["ModelDataConfig", "StageConfig", "option", "parse_device_map", "takes_config"]

#: manifest keys kept at the top level of the manifest, not in its ``config`` dict
TOP_LEVEL = ("model", "data", "seed", "n")
#: how the CLI turns a flag's text into the field's value (``auralens.cli``)
PARSERS = ("csv", "ints", "floats", "one")


# one-line helps shared by every stage's options (the CLI shows them)
MODEL_HELP = "'micro' (or micro-prior, micro-heads, micro-decay, micro-mpar2), a Hugging Face id or a local checkpoint folder."
DATA_HELP = ("'cafe', 'cafe-neutral|congruent|conflict[:calibration|dev|test]', an MMAU/MMAR JSON file "
             "or a folder with questions.jsonl, optionally ':calibration|dev|test[@seed]' (20/20/60 by item id).")
DTYPE_HELP = "auto | float32 | bfloat16 | float16"
RESUME_HELP = "Continue an interrupted run in --out (refused if any setting differs)."
DEVICE_MAP_HELP = ("Spread the model over devices (transformers device_map): 'auto', 'balanced', 'sequential', or a "
                   "JSON object of module name -> device such as '{\"model.layers.0\": 0, \"lm_head\": \"cpu\"}'; "
                   "default: the whole model on one device.")
#: the device_map strings transformers/accelerate understand
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def option(
    default: Any = dataclasses.MISSING,
    *,
    help: str,  # noqa: A002 - the name click and typer use
    identity: bool | str | None = True,
    flag: str | None = None,
    short: str | None = None,
    cli: bool = True,
    parse: str | None = None,
    cli_default: Any = dataclasses.MISSING,
    cli_type: Any = None,
) -> Any:
    """A config field with its one-line ``help``.

    ``identity``: ``True`` (the field is part of the manifest ``config`` under its name), a
    string (under that key), ``None`` (part of it only when set to something other than its
    default: an option added later, so that earlier runs keep their manifests and resume) or
    ``False`` (it does not change the run's results: ``out``, ``resume``, ``batch_size``...).  CLI: ``flag`` (default ``--kebab-name``; booleans that
    default to true get ``--x/--no-x``), ``short`` (``-m``), ``cli=False`` (no flag: the value
    is a Python object or rarely needed), ``parse`` (one of :data:`PARSERS`: ``csv`` = a comma
    list of names, ``ints`` / ``floats`` = a comma list of numbers, ``""`` = ``None``;
    ``one`` = a single value given as a 1-tuple), ``cli_default`` (the flag's default text when
    it differs from the field's) and ``cli_type`` (the flag's type when the annotation is not
    a plain ``str``/``int``/``float``/``bool``/``Path``)."""
    if parse is not None and parse not in PARSERS:
        raise ConfigError(f"option parse: expected one of {PARSERS}, found {parse!r}")
    meta = {"help": help, "identity": identity, "flag": flag, "short": short, "cli": cli, "parse": parse,
            "cli_default": cli_default, "cli_type": cli_type}
    return dataclasses.field(default=default, metadata=meta)


def _plain(value: Any) -> Any:
    """Tuples as lists (recursively), as the value reads back from manifest.json."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class StageConfig:
    """Base of the stage configs (``@dataclass(frozen=True, kw_only=True)`` subclasses)."""

    #: the manifest ``command`` of the stage (``"auralens record"``)
    COMMAND: ClassVar[str] = ""

    def identity(self) -> dict[str, Any]:
        """The manifest ``config`` dict: every field whose ``identity`` is not ``False``, except
        the top-level keys (:data:`TOP_LEVEL`), tuples as lists."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            key = f.metadata.get("identity", True)
            if key is False or f.name in TOP_LEVEL:
                continue
            if key is None:
                if getattr(self, f.name) == f.default:
                    continue
                key = True
            out[f.name if key is True else key] = _plain(getattr(self, f.name))
        return out

    def manifest(self, **config: Any) -> dict[str, Any]:
        """``command``, ``model``, ``data``, ``seed``, ``n`` and ``config`` (:meth:`identity`
        updated with ``config``: values only known at run time, such as a vector's digest)."""
        return {"command": self.COMMAND, **{k: getattr(self, k, None) for k in TOP_LEVEL},
                "config": {**self.identity(), **config}}

    def options(self) -> dict[str, Any]:
        """Every field by name: ``stage(**cfg.options())`` is ``stage(cfg)``."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def _set(self, name: str, value: Any) -> None:
        """Normalise a field in ``__post_init__`` (the dataclass is frozen)."""
        object.__setattr__(self, name, value)


def field_names(config_cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(config_cls))


TEMPLATE_HELP = ("Prompt template: cafe, chat, mmau, qwen2-audio-instruct, r1-aqa or qwen2.5-omni "
                 "(default: the model's own: its folder's auralens_model.json, else by its id, else cafe).")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelDataConfig(StageConfig):
    """A stage over one model and one dataset: the two options every such stage starts with."""

    model: str = option("micro", short="-m", help=MODEL_HELP)
    data: str = option("cafe", short="-d", help=DATA_HELP)
    device_map: str | None = option(None, identity=False, cli_type=str, help=DEVICE_MAP_HELP)
    prompt_template: str = option("", identity=None, help=TEMPLATE_HELP)


def parse_device_map(value: Any) -> str | dict[str, Any] | None:
    """``--device-map`` as transformers takes it: None (``None``, ``""``, ``"none"``), one of
    :data:`DEVICE_MAP_STRATEGIES`, or a dict of module name -> device (given as a dict or as a
    JSON object string; a device is an int GPU index or a string such as ``"cpu"``, ``"cuda:1"``,
    ``"disk"``).  Anything else is a :class:`ConfigError` naming ``device_map``."""

    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    if isinstance(value, str):
        text = value.strip()
        if text in DEVICE_MAP_STRATEGIES:
            return text
        if not text.startswith("{"):
            raise ConfigError(f"device_map: expected one of {list(DEVICE_MAP_STRATEGIES)}, 'none' or a JSON object "
                              f"of module -> device, found {value!r}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"device_map: expected a JSON object of module -> device, found {value!r} ({exc})") from None
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"device_map: expected a non-empty object of module -> device, found {value!r}")
    for k, v in value.items():
        ok = isinstance(k, str) and ((isinstance(v, int) and not isinstance(v, bool) and v >= 0) or
                                     (isinstance(v, str) and bool(v)))
        if not ok:
            raise ConfigError(f"device_map: expected module name -> device (a GPU index or a name such as 'cpu'), "
                              f"found {k!r}: {v!r}")
    return dict(value)


def takes_config(config_cls: type) -> Callable:
    """Decorate ``stage(cfg, *, lm=None, quiet=False, ...)`` so that it is also callable in the
    keyword style ``stage(model=..., n=..., lm=...)``: the config's fields among the keywords
    build ``config_cls`` (validated), the others go to the stage.  With both a config and
    config keywords, the keywords replace those fields (``stage(cfg, n=10)``)."""
    names = set(field_names(config_cls))

    def deco(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(cfg: Any = None, /, **kwargs: Any) -> Any:
            given = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
            if cfg is None:
                cfg = config_cls(**given)
            elif not isinstance(cfg, config_cls):
                raise ConfigError(f"{fn.__name__}: expected a {config_cls.__name__}, found {type(cfg).__name__}")
            elif given:
                cfg = dataclasses.replace(cfg, **given)
            return fn(cfg, **kwargs)

        wrapper.config_class = config_cls
        return wrapper

    return deco
