"""The ``activations/`` folder a collection writes (:mod:`auralens.probes.collect`), read back.

Layout: ``activations/index.json`` (format version, model, configuration, sites with their
layers, widths and positions, the finished chunks) and one safetensors file per chunk of rows,
``chunk-NNNNN.safetensors``, with tensors ``lm.<position>`` ``[rows, layer, d_model]``,
``audio_encoder.audio_mean`` ``[rows, audio_layer, d_audio]``, and for ``step_mean`` one row
per (row, step) present: ``lm.step_mean`` with ``lm.step_mean.row`` / ``lm.step_mean.step``;
the rows' metadata is the file's ``rows`` metadata (JSON).

Public API: :data:`LM_SITE`, :data:`AUDIO_SITE`, :data:`ACTIVATIONS_DIR`, :data:`INDEX_NAME`,
:data:`FORMAT_VERSION`, :func:`read_index`, :class:`ActivationStore`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open

from auralens.interp.errors import ProbeError

__all__ = ["ACTIVATIONS_DIR", "AUDIO_SITE", "FORMAT_VERSION", "INDEX_NAME", "LM_SITE", "ActivationStore", "read_index"]

#: site patterns of the probe table (the layer is its own column)
LM_SITE = "lm.blocks.{L}.hook_resid_post"
AUDIO_SITE = "audio_encoder.blocks.{L}.hook_resid_post"
ACTIVATIONS_DIR = "activations"
INDEX_NAME = f"{ACTIVATIONS_DIR}/index.json"
FORMAT_VERSION = 1


def read_index(folder: Path) -> dict[str, Any] | None:
    """The folder's ``activations/index.json`` (None when there is none)."""
    p = Path(folder) / INDEX_NAME
    if not p.exists():
        return None
    return json.loads(p.read_text())


# --------------------------------------------------------------------------------------------
# Reading back
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class ActivationStore:
    """Read access to a collected ``activations/`` folder, one (site, position, layer) at a time.

    ``rows`` is a DataFrame (row_id, item_id, format, n_steps, n_generated, text, chunk), in
    storage order; :meth:`matrix` returns the features of one probe location as
    ``(X [n, width] float32, rows)``, ``rows`` indexing :attr:`rows`. Only the requested layer
    slice is read from each chunk file (safetensors ``get_slice``), so memory stays at one
    ``[n_rows, width]`` matrix whatever the number of layers.
    """

    path: Path
    index: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        index = read_index(self.path)
        if index is None:
            raise ProbeError(f"activations in {str(self.path)!r}: expected {INDEX_NAME}, found none")
        self.index = index
        self._rows = None

    @property
    def complete(self) -> bool:
        return bool(self.index.get("complete")) and len(self.index["chunks"]) == self.index["n_chunks"]

    @property
    def sites(self) -> dict[str, dict[str, Any]]:
        return self.index["sites"]

    @property
    def config(self) -> dict[str, Any]:
        return self.index["config"]

    def _chunk_files(self) -> list[tuple[dict[str, Any], Path]]:
        if not self.complete:
            raise ProbeError(
                f"activations in {str(self.path)!r}: expected a complete collection, found "
                f"{len(self.index['chunks'])} of {self.index['n_chunks']} chunks (resume the run)"
            )
        return [(c, self.path / ACTIVATIONS_DIR / c["file"]) for c in self.index["chunks"]]

    @property
    def rows(self):
        import pandas as pd

        if self._rows is None:
            records = []
            for entry, path in self._chunk_files():
                with safe_open(str(path), framework="pt") as f:
                    meta = f.metadata() or {}
                for r in json.loads(meta.get("rows", "[]")):
                    records.append({**r, "chunk": entry["index"]})
            self._rows = pd.DataFrame.from_records(
                records, columns=["row_id", "item_id", "format", "n_steps", "n_generated", "text", "chunk"]
            )
        return self._rows

    def layers(self, site: str = LM_SITE) -> tuple[int, ...]:
        self._check_site(site)
        return tuple(self.sites[site]["layers"])

    def positions(self, site: str = LM_SITE) -> tuple[str, ...]:
        self._check_site(site)
        return tuple(self.sites[site]["positions"])

    def steps(self) -> tuple[int, ...]:
        """Reasoning steps stored for at least one row."""
        return tuple(range(min(int(self.rows["n_steps"].max() or 0), int(self.config["max_steps"]))))

    def _check_site(self, site: str) -> None:
        if site not in self.sites:
            raise ProbeError(f"site {site!r}: expected one of {sorted(self.sites)}, found no activations for it")

    def matrix(self, site: str, position: str, layer: int, step: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Features at one location: ``(X [n, width] float32, rows)``.

        ``step`` is required for ``step_mean`` (rows: those whose generation reaches that
        step) and must be ``None`` otherwise (rows: all).
        """

        self._check_site(site)
        layers = self.layers(site)
        if layer not in layers:
            raise ProbeError(
                f"layer {layer!r} at {site}: expected one of the collected layers {list(layers)}"
            )
        if position not in self.positions(site):
            raise ProbeError(
                f"position {position!r} at {site}: expected one of {list(self.positions(site))}"
            )
        li = layers.index(layer)
        if (position == "step_mean") != (step is not None):
            raise ProbeError(
                f"position {position!r}: {'a step is required' if step is None else 'takes no step'}, found step={step!r}"
            )
        key = ("audio_encoder." if site == AUDIO_SITE else "lm.") + position
        xs, idx = [], []
        start = 0
        for entry, path in self._chunk_files():
            with safe_open(str(path), framework="pt") as f:
                keys = set(f.keys())
                if position == "step_mean":
                    if key in keys:
                        srow = f.get_tensor(f"{key}.row").numpy()
                        sidx = f.get_tensor(f"{key}.step").numpy()
                        sel = np.flatnonzero(sidx == step)
                        if sel.size:
                            block = f.get_slice(key)[:, li, :].float().numpy()
                            xs.append(block[sel])
                            idx.append(srow[sel] + start)
                else:
                    if key not in keys:
                        raise ProbeError(f"chunk {path.name}: expected tensor {key!r}, found {sorted(keys)}")
                    xs.append(f.get_slice(key)[:, li, :].float().numpy())
                    idx.append(np.arange(entry["n_rows"]) + start)
            start += entry["n_rows"]
        width = int(self.sites[site]["width"])
        if not xs:
            return np.zeros((0, width), dtype=np.float32), np.zeros(0, dtype=np.int64)
        return np.concatenate(xs).astype(np.float32, copy=False), np.concatenate(idx).astype(np.int64)
