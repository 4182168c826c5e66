"""cafe: controlled audio scenes with ground truth known by construction.

- :mod:`auralens.interp.cafe.scenes`     seeded scene generator and synthesiser (events -> waveform)
- :mod:`auralens.interp.cafe.questions`  tiered multiple-choice questions in MMAU's shape
- :mod:`auralens.interp.cafe.formats`    answer formats (direct, cot, structured) and claim checking
"""

from auralens.interp.cafe.formats import FORMATS, check_claims, parse_claims, render_target  # noqa: F401
from auralens.interp.cafe.questions import TIERS, make_item, make_items  # noqa: F401
from auralens.interp.cafe.scenes import CLASSES, Event, Scene, make_scene, synthesize  # noqa: F401
