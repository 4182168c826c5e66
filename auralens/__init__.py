"""auralens: the command line and the demo, on top of interp / probes / steering / dashboards.

This package is the top of the stack: it may import every other package; none imports it.
"""

from interp import __version__  # noqa: F401
