"""auralens.probes — where audio information lives, by layer and by reasoning step.

- :mod:`auralens.probes.collect`   residual-stream activations through nnsight, reduced to positions
                          (audio mean, last prompt token, reasoning-step means), streamed to a
                          run folder in resumable chunks
- :mod:`auralens.probes.labels`    labels from cafe ground truth and from dataset metadata
- :mod:`auralens.probes.fit`       item-grouped linear probes with a control task and bootstrap CIs
- :mod:`auralens.probes.tables`    those probes over sites, layers, positions and steps (``probes.parquet``)
- :mod:`auralens.probes.figures`   plotly layer / step curves
- :mod:`auralens.probes.probing`   every attribute x location x split of a collected store (``probe_store``)
- :mod:`auralens.probes.report`    the probe run's pages and summary
- :mod:`auralens.probes.directions` probe directions for steering (saved, loaded, as plain dicts)
- :mod:`auralens.probes.stage`     the probe stage (``ProbeStageConfig``, ``stage_probe``)

Imports :mod:`interp` only (never :mod:`steering`). Importing this package imports nothing
heavy and changes no global state (nnsight, which patches torch on import, is imported only
when activations are collected).
"""
