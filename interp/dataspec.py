"""One typed ``--data`` value, parsed once: :class:`DataSpec`.

Every stage takes a dataset spec string on the command line and in its config; this module is
the only place that reads one.  Three kinds of dataset:

- ``cafe`` / ``cafe:<tiers>``: synthetic scenes drawn from the data seed; no named splits (the
  dev/test protocol uses the disjoint data seeds ``seed`` and ``seed + 1``).
- ``cafe-neutral|congruent|conflict[:calibration|dev|test]``: the cafe cue conditions, fixed
  seed ranges per split (:mod:`auralens.interp.cafe.cues`); no split means ``test``.  The three
  conditions share their underlying items: they are one *family*.
- a file dataset (an MMAU/MMAR ``.json`` or a folder with ``questions.jsonl``), optionally
  ``path:calibration|dev|test`` and ``@<split seed>``: the items whose hashed id falls in that
  split (:func:`file_split`).

``str(spec)`` is the canonical spec string (what manifests record and what the loaders read),
``spec.split("calibration")`` the same dataset's calibration split, ``spec.dev_test()`` the
dev/test pair of the steering protocol.  No stage builds a spec string by hand.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from auralens.interp.cafe.cues import CONDITIONS, split_seeds
from auralens.interp.errors import ConfigError, DatasetError

CUE_DATASETS = tuple(f"cafe-{c}" for c in CONDITIONS)
"""The cafe cue conditions' dataset names."""

SPLITS = ("calibration", "dev", "test")
#: the largest data or split seed (numpy's legacy seeding and many torch generators take 32 bits)
MAX_SEED = 2**32 - 1
#: the most items one run may ask for (``--n``): far above any benchmark here (MMAU test: 10,000),
#: low enough that a typo such as ``--n 99999999999999999999999`` is refused at once instead of
#: generating cafe scenes until memory runs out
MAX_ITEMS = 1_000_000

FILE_SPLITS: dict[str, float] = {"calibration": 0.2, "dev": 0.2, "test": 0.6}
"""Shares of a file dataset's items in each split (see :func:`file_split`)."""

_FILE_SPEC = re.compile(r"^(?P<path>.+?)(?::(?P<split>calibration|dev|test))?(?:@(?P<seed>[0-9]+))?$")

Kind = Literal["cafe", "cue", "file"]


def file_split(item_id: str, split_seed: int = 0) -> str:
    """The split (calibration | dev | test) of a file dataset's item: the first 8 bytes of
    sha256(``"<split seed>:<item id>"``) as a fraction u in [0, 1); u < 0.2 -> calibration,
    u < 0.4 -> dev, else test (:data:`FILE_SPLITS`).  Stable across machines, file order and
    file location; each item is in exactly one split, so the three are disjoint."""
    digest = hashlib.sha256(f"{int(split_seed)}:{item_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    edge = 0.0
    for name, share in FILE_SPLITS.items():
        edge += share
        if u < edge:
            return name
    return "test"


@dataclass(frozen=True, kw_only=True)
class DataSpec:
    """A parsed dataset spec.  Build it with :meth:`parse`; ``str()`` gives it back.

    ``kind``: ``cafe`` | ``cue`` | ``file``; ``name``: ``cafe``, ``cafe-<condition>`` or the
    file dataset's path as given; ``tiers``: plain cafe's tiers (None: all); ``split_name``: the
    named split (None: a whole file dataset, plain cafe, or a cue dataset given without one, which
    is its test split: see :attr:`effective_split`); ``split_seed``: a file dataset's split seed;
    ``seed``: the data seed (plain cafe draws its scenes from it; recorded for every kind)."""

    kind: Kind
    name: str
    tiers: tuple[str, ...] | None = None
    split_name: str | None = None
    split_seed: int = 0
    seed: int = 7

    def __post_init__(self) -> None:
        if self.kind not in ("cafe", "cue", "file"):
            raise ConfigError(f"data spec kind: expected cafe | cue | file, found {self.kind!r}")
        if self.split_name is not None and self.split_name not in SPLITS:
            raise ConfigError(f"data {self.name!r}: expected a split in {SPLITS}, found {self.split_name!r}")
        if self.kind == "cafe" and self.split_name is not None:
            raise ConfigError(f"data {self.name!r}: plain cafe has no named splits (it uses data seeds), "
                              f"found ':{self.split_name}'")
        if self.kind == "cue" and self.name not in CUE_DATASETS:
            raise ConfigError(f"data {self.name!r}: expected one of {CUE_DATASETS}")
        for label, value in (("split seed", self.split_seed), ("seed", self.seed)):
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SEED:
                raise ConfigError(f"{label}: expected an integer from 0 to {MAX_SEED} (2**32 - 1, what numpy and "
                                  f"torch seeds take) for data {self.name!r}, found {value!r}")

    # ------------------------------------------------------------------------------ parsing
    @classmethod
    def parse(cls, spec: str | DataSpec, *, seed: int = 7) -> DataSpec:
        """``cafe``, ``cafe:<tiers>``, ``cafe-<condition>[:<split>]``, ``<path>[:<split>][@<split seed>]``.

        A spec naming an existing path as a whole is that path (no split), so a file whose name
        ends in ``:dev`` or ``@1`` still loads.  A DataSpec passes through (with ``seed``
        replaced when it differs).  Only the syntax is checked here; the loaders check the
        path, the tiers and the rows."""
        if isinstance(spec, DataSpec):
            return spec if spec.seed == int(seed) else dataclasses.replace(spec, seed=int(seed))
        text = str(spec)
        if not text:
            raise ConfigError("data: expected a dataset spec ('cafe', a cue dataset, a .json file or a folder), "
                              "found an empty string")
        base, _, rest = text.partition(":")
        if base in CUE_DATASETS:
            if rest and rest not in SPLITS:
                raise DatasetError(f"dataset {text!r}: expected a split in {SPLITS} after ':', found {rest!r}")
            return cls(kind="cue", name=base, split_name=rest or None, seed=int(seed))
        if text == "cafe" or text.startswith("cafe:"):
            tiers = tuple(rest.split(",")) if ":" in text else None
            return cls(kind="cafe", name="cafe", tiers=tiers, seed=int(seed))
        m = _FILE_SPEC.match(text)
        if Path(text).exists() or m is None or (m["split"] is None and m["seed"] is None):
            return cls(kind="file", name=text, seed=int(seed))
        return cls(kind="file", name=m["path"], split_name=m["split"], split_seed=int(m["seed"] or 0),
                   seed=int(seed))

    def __str__(self) -> str:
        if self.kind == "cafe":
            return "cafe" + (f":{','.join(self.tiers)}" if self.tiers is not None else "")
        if self.kind == "cue":
            return self.name + (f":{self.split_name}" if self.split_name else "")
        if self.split_name is None:
            return self.name + (f"@{self.split_seed}" if self.split_seed else "")
        return f"{self.name}:{self.split_name}" + (f"@{self.split_seed}" if self.split_seed else "")

    # ------------------------------------------------------------------------------ splits
    @property
    def has_splits(self) -> bool:
        """Whether the dataset has calibration/dev/test splits (cue and file datasets do)."""
        return self.kind != "cafe"

    @property
    def effective_split(self) -> str | None:
        """The split the items come from: a cue dataset without one is its test split; None for
        plain cafe and a whole file dataset."""
        if self.kind == "cue":
            return self.split_name or "test"
        return self.split_name

    @property
    def family(self) -> str:
        """What two specs share when their items can overlap: ``cafe-cue`` for every cue
        condition, the resolved path for a file dataset, ``cafe`` for plain cafe."""
        if self.kind == "cue":
            return "cafe-cue"
        if self.kind == "file":
            return str(Path(self.name).resolve())
        return "cafe"

    def split(self, name: str) -> DataSpec:
        """The same dataset's split ``name`` (same condition, same split seed, same data seed)."""
        if name not in SPLITS:
            raise ConfigError(f"data {str(self)!r}: expected a split in {SPLITS}, found {name!r}")
        if not self.has_splits:
            raise ConfigError(f"data {str(self)!r}: plain cafe has no {name} split (it uses data seeds); "
                              "use a cue dataset or a file dataset")
        return dataclasses.replace(self, split_name=name)

    def whole(self) -> DataSpec:
        """The dataset without a split (a cue dataset: its default, the test split)."""
        return dataclasses.replace(self, split_name=None)

    def dev_test(self) -> tuple[DataSpec, DataSpec]:
        """(dev, test) of the dev/test protocol: a cue or file dataset's ``dev`` and ``test``
        splits (the dataset must be given without a split); plain cafe: data seeds ``seed`` and
        ``seed + 1``."""
        if self.kind == "cafe":
            return self, dataclasses.replace(self, seed=self.seed + 1)
        if self.split_name is not None:
            dev, test = self.split("dev"), self.split("test")
            raise ConfigError(f"data {str(self)!r}: the dev/test protocol takes the dataset without a split (it "
                              f"uses {dev} to choose beta and {test} to report), found ':{self.split_name}'")
        return self.split("dev"), self.split("test")

    def with_seed(self, seed: int) -> DataSpec:
        return dataclasses.replace(self, seed=int(seed))

    def seed_range(self, n: int) -> list[int] | None:
        """[first, last + 1) of the scene seeds behind the first ``n`` items (cafe kinds), else None."""
        if self.kind == "cue":
            r = split_seeds(self.effective_split or "test", n)
            return [r.start, r.stop]
        if self.kind == "cafe":
            return [self.seed * 100_000, self.seed * 100_000 + n]
        return None

    def overlaps(self, other: DataSpec) -> bool:
        """Whether the two specs can share items: same family, and not two different named
        splits under the same split seed.  Plain cafe specs overlap when their data seeds are
        equal."""
        if self.family != other.family:
            return False
        if self.kind == "cafe":
            return self.seed == other.seed
        a, b = self.effective_split, other.effective_split
        if a is None or b is None or self.split_seed != other.split_seed:
            return True  # a whole dataset, or splits drawn under different split seeds
        return a == b
