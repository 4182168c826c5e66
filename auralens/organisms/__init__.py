"""Model organisms: `micro` variants with a listening deficit planted by their training data —
their names, recipes, training and validation, in one namespace::

    from auralens.organisms import RECIPES, train_organism, validate

- names and weights: :data:`ORGANISMS`, :data:`EMBEDDED`, :func:`available`, :func:`planted`
  (the table lives in :mod:`auralens.interp.micro`, where model loading reads it)
- recipes: :class:`OrganismConfig`, :data:`RECIPES`, :func:`organism_item` (in
  :mod:`auralens.interp.micro.organisms`, where :mod:`auralens.finetuning` reads them)
- training: :func:`train_organism` (:mod:`auralens.organisms.train`)
- validation: :func:`validate` and its checks (:mod:`auralens.organisms.validate`,
  ``auralens organisms validate``)
"""

from auralens.interp.micro import EMBEDDED, ORGANISMS, available
from auralens.interp.micro.organisms import RECIPES, OrganismConfig, organism_item
from auralens.organisms.train import train_organism
from auralens.organisms.validate import (
    PROBE_ATTRIBUTES,
    claim_gap_by_item,
    class_claim_steps,
    cue_accuracy,
    decay_checks,
    heads_checks,
    healthy_checks,
    onset,
    planted,
    prior_checks,
    probe_checks,
    summary_rows,
    validate,
)

__all__ = ["EMBEDDED", "ORGANISMS", "PROBE_ATTRIBUTES", "RECIPES", "OrganismConfig", "available", "class_claim_steps",
           "claim_gap_by_item", "cue_accuracy", "decay_checks", "healthy_checks", "heads_checks", "onset",
           "organism_item", "planted", "prior_checks", "probe_checks", "summary_rows", "train_organism", "validate"]
