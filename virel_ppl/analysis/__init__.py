"""The analysis layer: posterior diagnostics of trained agents and multi-seed reports."""

from types import ModuleType


def import_arviz() -> ModuleType:
    """``import arviz``, safe when several processes import it at the same moment.

    On its first import of each day ArviZ 0.23 writes a stamp (``daily_warning`` in its cache directory) through one
    fixed temporary name. Two processes importing it at once (pytest-xdist's workers collecting the tests, two sweep
    trials at their first evaluation) both write that name, and the slower one's rename fails with FileNotFoundError,
    failing its import. By then the faster process has written the stamp, so importing again reads it and succeeds.
    """
    try:
        import arviz
    except FileNotFoundError:
        import arviz
    return arviz
