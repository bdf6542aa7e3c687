"""How far ``--guide gaussian`` is pulled outside the box by the entropy of the unclipped Gaussian (docs/math.md).

Box [−1, 1], Q(a) = −a²/2, guide N(0, σ) with σ ≤ e² (``LOG_STD_MAX``), prior uniform on the box. The model
scores the clipped action, so ELBO(σ) = E[Q(clip(a))]/ε + ½ log(2πeσ²) − log 2, computed by quadrature (the
clipped mass at ±1 in closed form), maximised over a grid of σ, and compared with log Z = log ∫ exp(Q/ε) da/2.

    python benchmarks/gaussian_guide_bias.py
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0  # as in virel_ppl/inference/guides.py (half-range 1)


def elbo(sigma: float, eps: float, x: np.ndarray) -> tuple[float, float]:
    """(ELBO, mass on the box edges) of N(0, σ) with Q(a) = −a²/2 scored at clip(a)."""
    edge = 2 * NormalDist(0.0, sigma).cdf(-1.0)
    density = np.exp(-(x**2) / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))
    expected_q = np.trapezoid(-(x**2) / 2 * density, x) + edge * -0.5
    return expected_q / eps + 0.5 * math.log(2 * math.pi * math.e * sigma**2) - math.log(2.0), edge


def main() -> None:
    x = np.linspace(-1.0, 1.0, 20_001)
    sigmas = np.exp(np.linspace(LOG_STD_MIN, LOG_STD_MAX, 2001))
    print("| ε | σ maximising the ELBO | actions on the box edges | ELBO − log Z |")
    print("|---|---|---|---|")
    for eps in (1.0, 0.3, 0.1, 0.03):
        values = [elbo(s, eps, x)[0] for s in sigmas]
        best = int(np.argmax(values))
        log_z = math.log(np.trapezoid(np.exp(-(x**2) / (2 * eps)), x)) - math.log(2.0)
        edge = elbo(sigmas[best], eps, x)[1]
        print(f"| {eps:g} | {sigmas[best]:.3g} | {100 * edge:.1f} % | {values[best] - log_z:+.3f} |")


if __name__ == "__main__":
    main()
