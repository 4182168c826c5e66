"""The run tables' columns, declared once: what each stage writes, read by everyone else.

One :class:`Table` per parquet table a stage writes: its stage, its file name and its columns,
each with a kind (``int``, ``float``, ``bool``, ``str`` or ``any``).  The writers validate their
frame on write (:meth:`Table.write`: column names and dtype kinds, no pass over the values),
``dashboards/synthetic.py`` builds its test tables from the same declarations
(:meth:`Table.frame`), and readers find a table by ``"<stage>/<file>"`` in :data:`TABLES`.

A kind is checked only for a column with at least one value (an empty table, or a column of
missing values, has no dtype to speak of).  ``str`` accepts any object or string dtype.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from auralens.interp.errors import RunFolderError

__all__ = [
    "ACCURACY",
    "CLAIMS",
    "CLAIM_ACCURACY",
    "COMPARE",
    "DECAY",
    "DECAY_SUMMARY",
    "EVAL_ITEMS",
    "GENERATIONS",
    "HEADS",
    "PROBES",
    "RECORD_ITEMS",
    "STEERING",
    "STEER_ITEMS",
    "SYSTEMS",
    "TABLES",
    "Table",
]

#: dtype kinds (``numpy.dtype.kind``) each column kind accepts; None: any dtype
_DTYPE_KINDS: dict[str, str | None] = {"int": "iu", "float": "f", "bool": "b", "str": "OUT", "any": None}


@dataclass(frozen=True)
class Table:
    """One run table: ``stage``/``name`` and its ``(column, kind)`` pairs, in writing order."""

    stage: str
    name: str
    columns: tuple[tuple[str, str], ...]
    doc: str = ""

    def __post_init__(self) -> None:
        bad = [(c, k) for c, k in self.columns if k not in _DTYPE_KINDS]
        if bad:
            raise ValueError(f"table {self.path}: expected kinds among {sorted(_DTYPE_KINDS)}, found {bad}")

    @property
    def path(self) -> str:
        """``"<stage>/<file>"``, the key in :data:`TABLES`."""
        return f"{self.stage}/{self.name}"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c for c, _ in self.columns)

    @property
    def kinds(self) -> dict[str, str]:
        return dict(self.columns)

    def frame(self, rows: Iterable[Mapping[str, Any] | tuple] = ()):
        """A DataFrame of ``rows`` (mappings or tuples in column order) with exactly these
        columns, in order; an empty one when there are no rows."""
        import pandas as pd

        rows = list(rows)
        if rows and isinstance(rows[0], Mapping):
            extra = sorted({k for r in rows for k in r} - set(self.names))
            if extra:
                raise RunFolderError(f"table {self.path}: expected the columns {list(self.names)}, "
                                     f"found extra columns {extra}")
        return pd.DataFrame(rows, columns=list(self.names))

    def check(self, df):
        """``df`` itself when it has exactly these columns and each column's dtype fits its
        kind; else a :class:`RunFolderError` naming the table, the column and the mismatch."""
        found = [str(c) for c in df.columns]
        missing = [c for c in self.names if c not in found]
        extra = [c for c in found if c not in self.kinds]
        if missing or extra:
            raise RunFolderError(
                f"table {self.path}: expected the columns {list(self.names)}, found {found}"
                + (f" (missing {missing})" if missing else "") + (f" (unexpected {extra})" if extra else "")
            )
        if len(df):
            for col, kind in self.columns:
                allowed = _DTYPE_KINDS[kind]
                dtype = df[col].dtype
                if allowed is None or getattr(dtype, "kind", "O") in allowed or not df[col].notna().any():
                    continue
                raise RunFolderError(f"table {self.path}: expected column {col!r} of kind {kind}, found dtype {dtype}")
        return df

    def write(self, run, df) -> Path:
        """Check ``df`` (:meth:`check`) and write it as ``name`` in the run folder ``run``."""
        return run.write_table(self.name, self.check(df))


def _table(stage: str, name: str, spec: str, doc: str = "") -> Table:
    """``spec``: whitespace-separated ``column:kind`` pairs."""
    pairs = [p.split(":") for p in spec.split()]
    return Table(stage, name, tuple((column, kind) for column, kind in pairs), doc)


# ------------------------------------------------------------------------------------- eval
EVAL_ITEMS = _table("eval", "items.parquet", """
    item_id:str row_id:str tier:str category:str sub_category:str task:str difficulty:str format:str audio:str
    answer:str prediction:str answer_span:str matched_choice:str extracted:str correct:bool
""", "one row per (item, format, audio mode); row_id = item_id|format|audio; task/difficulty: MMAU's, else ''")
ACCURACY = _table("eval", "accuracy.parquet", """
    audio:str format:str tier:str accuracy:float ci_low:float ci_high:float n:int
""", "accuracy per (audio mode, format, tier) with its 95% Wilson interval")

# ----------------------------------------------------------------------------------- record
RECORD_ITEMS = _table("record", "items.parquet", """
    item_index:int item_id:str tier:str category:str sub_category:str format:str question:str answer:str
    prediction:str answer_span:str matched_choice:str extracted:str correct:bool n_tokens:int n_steps:int audio_path:str
    error_type:str
""", "one row per item; yields/{item_index:05d}.safetensors holds its per-token yields")
DECAY = _table("record", "decay.parquet", """
    group:str axis:str layer:int head:int step:int mean_yield:float ci_low:float ci_high:float n:int
""", "mean yield per step (axis step) or token bin (axis token_bin) of all heads, the top-k heads "
     "(layer = head = -1) and each head (group head), with 95% CIs across items; on the step axis "
     "also 'all:claim'/'topk:claim' (claim steps only), '...:reasoning' (reasoning steps only) and "
     "'...:reach_last' (only the items whose chain reaches step S_max, steps 0..S_max)")
DECAY_SUMMARY = _table("record", "decay_summary.parquet", """
    group:str axis:str layer:int head:int slope:float last_first_ratio:float first:float last:float n_steps:int
    slope_ci_low:float slope_ci_high:float ratio_ci_low:float ratio_ci_high:float n_items:int
""", "least-squares slope of the mean yield per step and the last/first ratio, per group and head; "
     "item-bootstrap 95% CIs of both for the all/topk groups and their subsets (NaN for single heads, "
     "n_items -1 there)")
HEADS = _table("record", "heads.parquet", """
    layer:int head:int corr:float corr_rank:int contrast:float contrast_rank:int contrast_dz:float
    mean_yield:float listens:bool rank:int
""", "the listening signal per head (auralens.interp.listening.heads_table); rank 1 = strongest listener; "
     "heads whose mean audio yield is below auralens.interp.listening.MIN_YIELD (listens False) rank last")
CLAIMS = _table("record", "claims.parquet", """
    item_id:str step:int kind:str sound:int value:str claim_correct:bool
""", "every perceptual claim of a generation, checked against the scene (sound -1: a count claim)")
CLAIM_ACCURACY = _table("record", "claim_accuracy.parquet", """
    step:int accuracy:float ci_low:float ci_high:float n_claims:int n_items:int
""", "accuracy of the claims made at each reasoning step: the item-level mean (items' shares of "
     "right claims, averaged) and its 95% CI: Wilson's where every item made one claim there (a "
     "share of right/wrong), else the item bootstrap")

# ------------------------------------------------------------------------------------ probe
PROBES = _table("probe", "probes.parquet", """
    site:str layer:int position:any step:any attribute:str accuracy:float control_accuracy:float
    selectivity:float chance:float ci_low:float ci_high:float n:int split:str
""", "one probe per (site, layer, position, step, attribute, split); step is a nullable integer "
     "(missing for prompt positions); accuracy is R² for continuous attributes; split: the items "
     "the probe was cross-validated on, 'select' (chooses the best layer/position), 'report' "
     "(disjoint items, the scores reported there) or 'all' (no split)")
GENERATIONS = _table("probe", "generations.parquet", """
    row_id:str item_id:str format:str n_steps:int n_generated:int text:str chunk:int
""", "the generated answer of each probed (item, format) and the activation chunk holding it")

# ------------------------------------------------------------------------------------ steer
STEERING = _table("steer", "steering.parquet", """
    vector:str method:str layer:int beta:float positions:str category:str accuracy:float ci_low:float
    ci_high:float n:int delta:float delta_ci_low:float delta_ci_high:float format:str
""", "accuracy per (vector, method, layer, beta, positions, format, category) and the paired gain over beta 0")
STEER_ITEMS = _table("steer", "items.parquet", """
    row_id:str item_id:str vector:str method:str layer:int beta:float positions:str format:str category:str
    tier:str answer:str prediction:str answer_span:str matched_choice:str extracted:str correct:bool
""", "one generation per (item, vector, layer, beta, positions, format); vector 'baseline' is unsteered")

# ---------------------------------------------------------------------------------- compare
#: the measured systems of compare.parquet, in display order (reported rows name the paper's model)
SYSTEMS: tuple[str, ...] = ("base", "base+steering", "mpar2", "mpar2+steering", "hyper")
COMPARE = _table("compare", "compare.parquet", """
    organism:str system:str condition:str format:str metric:str group:str value:float ci_low:float ci_high:float
    n:int source:str note:str
""", "one number per row: measured (source measured; organism = the base model of the grid cell, condition = "
     "the dataset, format = the answer format of that system) or quoted from a paper (source reported; organism "
     "empty, system = the paper's model, condition = the benchmark)")

TABLES: dict[str, Table] = {t.path: t for t in (
    EVAL_ITEMS, ACCURACY, RECORD_ITEMS, DECAY, DECAY_SUMMARY, HEADS, CLAIMS, CLAIM_ACCURACY, PROBES, GENERATIONS,
    STEERING, STEER_ITEMS, COMPARE,
)}
