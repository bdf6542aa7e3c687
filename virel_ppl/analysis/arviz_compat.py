"""The one module that knows which ArviZ generation is installed; the rest of virel_ppl calls only these functions.

ArviZ 0.x is one package, ``arviz`` (statistics, data and plots). ArviZ 1.x (Python ≥ 3.12) is a thin ``arviz``
over arviz-base (data: ``xarray.DataTree`` instead of ``InferenceData``), arviz-stats (statistics) and arviz-plots,
and renamed what this package uses:

- PSIS: ``az.psislw(log_weights)`` → arviz-stats' ``psislw(log_lik)``, which takes −log w (LOO's log-likelihood)
  and fits a tail of ⌊3√n⌋ draws where 0.x fits ⌈3√n⌉ (the same k̂ where 3√n is an integer, else close);
- HDI: ``az.hdi(x, hdi_prob=p)`` → ``hdi(x, prob=p)``;
- summary: ``hdi_prob=``, columns ``hdi_3%``, ``hdi_97%`` → ``ci_prob=``, ``ci_kind="hdi"``, ``hdi94_lb``, ``hdi94_ub``;
- posterior draws: ``az.InferenceData`` → ``xarray.DataTree`` (read alike: ``obj.posterior["a"]``).

Under 1.x only arviz-base and arviz-stats are imported (``import arviz`` would also import arviz-plots and its
plotting backend); the plots of this package are drawn with matplotlib from ArviZ's KDE. Both generations write the
same netCDF groups, so an ``action_posterior.nc`` written under one is read under the other.
"""

from __future__ import annotations

import importlib
import math
import re
from importlib import metadata
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from virel_ppl.config import ConfigError

if TYPE_CHECKING:
    import xarray as xr

#: The oldest ArviZ this package is written against (``pyproject.toml`` says the same).
MIN_ARVIZ = (0, 18)  # 0.17 does not import with SciPy >= 1.13


class ArviZError(ConfigError):
    """ArviZ is missing or too old: the message says which version to install."""


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3])


def arviz_version() -> str:
    """The installed ArviZ's version, read from its metadata (without importing it); ArviZError if it is missing
    or older than :data:`MIN_ARVIZ`."""
    floor = ".".join(map(str, MIN_ARVIZ))
    try:
        version = metadata.version("arviz")
    except metadata.PackageNotFoundError:
        raise ArviZError(f"ArviZ is not installed: pip install 'arviz>={floor}'.") from None
    if _version_tuple(version) < MIN_ARVIZ:
        raise ArviZError(f"ArviZ {version} is too old: pip install 'arviz>={floor}'.")
    return version


def is_arviz_1() -> bool:
    """True when the installed ArviZ is 1.x or later (arviz-base, arviz-stats)."""
    return _version_tuple(arviz_version())[0] >= 1


def _import(name: str) -> ModuleType:
    """``import name``, safe when several processes import ArviZ at the same moment.

    On its first import of each day ArviZ 0.23 writes a stamp (``daily_warning`` in its cache directory) through one
    fixed temporary name. Two processes importing it at once (pytest-xdist's workers collecting the tests, two sweep
    trials at their first evaluation) both write that name, and the slower one's rename fails with FileNotFoundError,
    failing its import. By then the faster process has written the stamp, so importing again reads it and succeeds.
    """
    try:
        return importlib.import_module(name)
    except FileNotFoundError:
        return importlib.import_module(name)
    except ImportError as err:  # e.g. arviz 1.x installed without its arviz-stats
        floor = ".".join(map(str, MIN_ARVIZ))
        raise ArviZError(f"ArviZ cannot be imported ({err}): pip install --force-reinstall 'arviz>={floor}'.") from None


def import_arviz() -> ModuleType:
    """``import arviz`` (the whole of it, plots included, in either generation), after checking its version."""
    arviz_version()
    return _import("arviz")


def _stats() -> ModuleType:
    """The statistics: ``arviz`` under 0.x, ``arviz_stats`` under 1.x."""
    return _import("arviz_stats") if is_arviz_1() else import_arviz()


def _array_stats():
    """arviz-stats' functions on numpy arrays (1.x only)."""
    return _import("arviz_stats.base").array_stats


# --- statistics ---------------------------------------------------------------------------------------------------


def psislw(log_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PSIS (Vehtari et al. 2024) over the last axis of log importance weights ``(..., n)``: (normalised smoothed
    log weights ``(..., n)``, Pareto shape k̂ ``(...)``).

    Where the tail cannot be fitted (fewer than 5 tail draws, or all tail weights equal) k̂ is inf and the weights
    are the normalised raw ones, under both generations (1.x raises there; 0.x returns this).
    """
    lw = np.asarray(log_weights, dtype=np.float64)
    if not is_arviz_1():
        az = import_arviz()
        smoothed, khat = az.psislw(lw)
        return np.asarray(smoothed), np.asarray(khat, dtype=np.float64).reshape(lw.shape[:-1])
    stats = _array_stats()
    flat = lw.reshape(-1, lw.shape[-1])
    smoothed, khat = np.empty_like(flat), np.empty(len(flat))
    for i, row in enumerate(flat):  # one row at a time: a row the fit refuses must not fail the others
        try:
            s, k = stats.psislw(-row, r_eff=1.0)  # arviz-stats takes the log-likelihood: log w = −log_lik
            smoothed[i], khat[i] = s, k
        except ValueError:
            smoothed[i], khat[i] = row - np.logaddexp.reduce(row), math.inf
    return smoothed.reshape(lw.shape), khat.reshape(lw.shape[:-1])


def hdi(draws: np.ndarray, prob: float) -> np.ndarray:
    """Highest-density interval over the first axis (draws): ``(n, ...)`` → ``(..., 2)``, the narrowest interval
    between two draws that holds ⌊prob·n⌋ + 1 of them (both generations)."""
    x = np.asarray(draws, dtype=np.float64)
    if is_arviz_1():
        return np.asarray(_array_stats().hdi(x, prob, axis=0))
    az = import_arviz()
    return np.asarray(az.hdi(x[None], hdi_prob=prob)).reshape(*x.shape[1:], 2)  # (chain=1, draw, ...)


def summary_stats(draws: np.ndarray, prob: float) -> dict[str, Any]:
    """``az.summary(kind="stats")`` of one scalar's draws ``(n,)``: mean, sd (ddof 1) and the ``prob`` HDI
    ``(low, high)``, unrounded."""
    x = np.asarray(draws, dtype=np.float64)[None, :]  # (chain, draw)
    if is_arviz_1():
        base = _import("arviz_base")
        tree = base.from_dict({"posterior": {"x": x}})
        table = _stats().summary(tree, kind="stats", ci_prob=prob, ci_kind="hdi", round_to="none")
    else:
        table = import_arviz().summary({"x": x}, kind="stats", hdi_prob=prob, round_to="none")
    row = table.loc["x"]
    low, high = (c for c in table.columns if c.startswith("hdi"))
    return {"mean": float(row["mean"]), "sd": float(row["sd"]), "hdi": (float(row[low]), float(row[high]))}


def kde(draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ArviZ's linear KDE of 1-D ``draws`` with Scott's bandwidth (bounded to their range, boundary-corrected):
    (grid, density)."""
    x = np.asarray(draws, dtype=np.float64).ravel()
    if is_arviz_1():
        grid, pdf, _ = _array_stats().kde(x, bw="scott")
    else:
        grid, pdf = import_arviz().kde(x, bw="scott")
    return np.asarray(grid), np.asarray(pdf)


# --- posterior draws as ArviZ data ----------------------------------------------------------------------------------


def dataset(
    data: dict[str, np.ndarray], coords: dict[str, list] | None = None, dims: dict[str, list[str]] | None = None
) -> xr.Dataset:
    """Arrays ``(chain, draw, ...)`` as an ``xarray.Dataset`` with ArviZ's ``chain``/``draw`` dims."""
    base = _import("arviz_base") if is_arviz_1() else import_arviz()
    return base.dict_to_dataset(data, coords=coords, dims=dims)


def inference_data(groups: dict[str, xr.Dataset]) -> Any:
    """Groups as one ArviZ object: ``az.InferenceData`` under 0.x, ``xarray.DataTree`` under 1.x. Either is read
    the same way: ``obj.posterior["a"]``, ``obj["target"]["a"]``, ``obj.constant_data["eps"]``."""
    if is_arviz_1():
        import xarray as xr

        return xr.DataTree.from_dict(groups)
    return import_arviz().InferenceData(**groups)


def group_names(idata: Any) -> list[str]:
    """The groups of an ``InferenceData`` or ``DataTree`` (``posterior``, ``sample_stats``, ...)."""
    return list(idata.groups()) if callable(getattr(idata, "groups", None)) else list(idata.children)


def to_netcdf(idata: Any, path: str) -> str:
    """Write ``idata`` as netCDF-4 (h5netcdf): one group per ArviZ group, the same file under both generations."""
    idata.to_netcdf(path, engine="h5netcdf")
    return path


def from_netcdf(path: str) -> Any:
    """Read a netCDF file written by :func:`to_netcdf` under either generation."""
    if is_arviz_1():
        import xarray as xr

        return xr.open_datatree(path, engine="h5netcdf")
    return import_arviz().from_netcdf(path, engine="h5netcdf")
