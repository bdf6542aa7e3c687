"""The analysis layer: posterior diagnostics of trained agents and multi-seed reports.

ArviZ is reached only through :mod:`virel_ppl.analysis.arviz_compat`, which works with ArviZ 0.x and 1.x.
"""

from virel_ppl.analysis.arviz_compat import import_arviz

__all__ = ["import_arviz"]
