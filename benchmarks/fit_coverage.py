"""Coverage of the saturating fit's confidence intervals, simulated at Pythia's sizes.

Run (about 5 minutes on 2 CPU cores)::

    python -m benchmarks.fit_coverage --reps 500 --seed 0

Each replicate draws ``y = C * N**-alpha + y_inf + noise`` at the smallest 4, 5 or all 8
Pythia parameter counts (70m .. 12b), fits it with ``fit_scaling(form="saturating")``'s
fitter and asks whether each interval holds the true ``alpha`` and ``y_inf``. Two methods:

* ``bootstrap``: the percentile interval of a seeded pairs bootstrap (200 resamples, the
  sweep's default; resamples with fewer than 4 distinct sizes redrawn), the method used
  before; none with 4 sizes. Kept here, copied from the old ``analyses/scaling.py``, as the
  baseline.
* ``profile``: the profile-likelihood (profile-t) interval that ``fit_scaling`` now reports.

"open" is the share of intervals unbounded on a side (alpha's reaching 0 or infinity), and
"median width" is over all replicates (inf when over half are open). A method is well
calibrated when its coverage is near the nominal level; the +- is the 95% Wilson interval of
the coverage over the replicates.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from statsmodels.stats.proportion import proportion_confint

from scalelens.analyses.scaling import _fit_saturating, _profile_ci

PYTHIA = np.array(
    [70_426_624, 162_322_944, 405_334_016, 1_011_781_632, 1_414_647_808, 2_775_208_960,
     6_857_302_016, 11_846_072_320],
    dtype=float,
)  # fmt: skip
PARAMS = ("alpha", "y_inf")
Interval = dict[str, list[float]]


@dataclass(frozen=True)
class Scenario:
    """A true curve ``C * N**-alpha + y_inf`` and its additive noise: Gaussian with sd
    ``sigma``, or with ``t_dof`` > 0 Student's t scaled by ``sigma`` (heavy tails, which
    least squares does not assume)."""

    name: str
    c: float
    alpha: float
    y_inf: float
    sigma: float
    t_dof: float = 0.0

    def noise(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """One draw of the noise at ``size`` points."""
        if self.t_dof > 0:
            return np.asarray(self.sigma * rng.standard_t(self.t_dof, size=size))
        return rng.normal(scale=self.sigma, size=size)

    def curve(self, n: np.ndarray) -> np.ndarray:
        """The noiseless metric at parameter counts ``n``."""
        return np.asarray(self.c * n**-self.alpha + self.y_inf)


SCENARIOS = (
    # Chinchilla's loss fit (Hoffmann et al. 2022: E = 1.69, A = 406.4, alpha = 0.34): 2.56 at
    # 70m to 1.84 at 12b; sd 0.01 and 0.03 nats, the spread of an eval loss over batches/seeds.
    Scenario("loss, sd 0.01", 406.4, 0.34, 1.69, 0.01),
    Scenario("loss, sd 0.03", 406.4, 0.34, 1.69, 0.03),
    # A rising metric (an MDI-like ratio): 0.33 at 70m to 2.22 at 12b, sd 0.05.
    Scenario("rising, sd 0.05", -3000.0, 0.4, 2.5, 0.05),
    # Heavy-tailed noise (Student's t, 3 dof, scale 0.01): the Gaussian model is wrong.
    Scenario("loss, t(3) x 0.01", 406.4, 0.34, 1.69, 0.01, t_dof=3.0),
)


def _draw_indices(x: np.ndarray, need: int, n_boot: int, seed: int) -> np.ndarray:
    """``(n_boot, n)`` resample indices, each with at least ``need`` distinct x (old method)."""
    rng = np.random.default_rng(seed)
    kept: list[np.ndarray] = []
    for _ in range(50):
        idx = rng.integers(x.size, size=(n_boot, x.size))
        distinct = 1 + (np.diff(np.sort(x[idx], axis=1), axis=1) > 0).sum(axis=1)
        kept.append(idx[distinct >= need])
        if sum(len(k) for k in kept) >= n_boot:
            break
    return np.concatenate(kept)[:n_boot]


def bootstrap_ci(x: np.ndarray, y: np.ndarray, level: float, seed: int, n_boot: int = 200) -> Interval:
    """The old pairs-bootstrap percentile intervals; none with only 4 distinct x."""
    if np.unique(x).size <= 4:
        return {}
    idx = _draw_indices(x, 4, n_boot, seed)
    fits = [_fit_saturating(x[row], y[row])[0] for row in idx]
    tail = 50.0 * (1.0 - level)
    return {name: [float(v) for v in np.percentile([f[name] for f in fits], [tail, 100 - tail])]
            for name in PARAMS}


def profile_ci(x: np.ndarray, y: np.ndarray, level: float, seed: int) -> Interval:
    """The profile-likelihood intervals ``fit_scaling`` reports (``seed`` unused)."""
    return _profile_ci(x, y, _fit_saturating(x, y)[0], level)


METHODS: dict[str, Callable[[np.ndarray, np.ndarray, float, int], Interval]] = {
    "bootstrap": bootstrap_ci,
    "profile": profile_ci,
}


def simulate(scenario: Scenario, k: int, method: str, reps: int, level: float, seed: int
             ) -> dict[str, dict[str, float]]:
    """Coverage, open share, median width and no-interval share of each parameter."""
    x = PYTHIA[:k]
    truth = {"alpha": scenario.alpha, "y_inf": scenario.y_inf}
    hits = {p: 0 for p in PARAMS}
    opened = {p: 0 for p in PARAMS}
    widths: dict[str, list[float]] = {p: [] for p in PARAMS}
    missing = 0
    for rep in range(reps):
        rng = np.random.default_rng([seed, k, rep])
        y = scenario.curve(x) + scenario.noise(rng, k)
        ci = METHODS[method](x, y, level, rep)
        if not ci:
            missing += 1
            continue
        for p in PARAMS:
            lo, hi = ci[p]
            hits[p] += lo <= truth[p] <= hi
            opened[p] += not (math.isfinite(lo) and math.isfinite(hi)) or (p == "alpha" and lo == 0)
            widths[p].append(hi - lo)
    out = {}
    for p in PARAMS:
        got = reps - missing
        low, high = proportion_confint(hits[p], got, 1 - 0.95, "wilson") if got else (math.nan,) * 2
        out[p] = {"coverage": hits[p] / got if got else math.nan, "lo": low, "hi": high,
                  "open": opened[p] / got if got else math.nan,
                  "width": float(np.median(widths[p])) if got else math.nan,
                  "none": missing / reps}
    return out


def _cell(s: dict[str, float]) -> str:
    if s["none"] == 1.0:
        return "no interval"
    cov = f"{100 * s['coverage']:.1f}% [{100 * s['lo']:.0f}, {100 * s['hi']:.0f}]"
    return f"{cov}; open {100 * s['open']:.0f}%; width {s['width']:.3g}"


def main(argv: list[str] | None = None) -> int:
    """Run the simulation and print a markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--reps", type=int, default=500, help="replicates per cell")
    ap.add_argument("--level", type=float, default=0.95, help="nominal level of the intervals")
    ap.add_argument("--seed", type=int, default=0, help="seed of the noise")
    ap.add_argument("--sizes", default="4,5,8", help="numbers of Pythia sizes, smallest first")
    args = ap.parse_args(argv)
    if args.reps < 1 or not 0 < args.level < 1:
        ap.error("--reps must be >= 1 and --level in (0, 1)")
    sizes = [int(v) for v in args.sizes.split(",")]
    if any(not 4 <= k <= PYTHIA.size for k in sizes):
        ap.error(f"--sizes must lie in 4..{PYTHIA.size}")
    start = time.perf_counter()
    print(f"{args.reps} replicates per row, nominal {100 * args.level:g}%, seed {args.seed}. Cell: "
          "coverage [95% Wilson]; share open-ended; median width.\n")
    print("| scenario | sizes | method | alpha | y_inf |")
    print("|---|---|---|---|---|")
    for scenario in SCENARIOS:
        for k in sizes:
            for method in METHODS:
                s = simulate(scenario, k, method, args.reps, args.level, args.seed)
                print(f"| {scenario.name} | {k} | {method} | {_cell(s['alpha'])} | {_cell(s['y_inf'])} |")
                sys.stdout.flush()
    print(f"\n{time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
