"""Mean corruption error, as ImageNet-C defines it (Hendrycks & Dietterich 2019), from robustness.json files.

For design f and corruption c, with E the error rate at severity s and E_clean on the same clean images:
  CE_c = sum_s E^f_{s,c} / sum_s E^base_{s,c}                                   mCE = 100 x mean_c CE_c
  rel. CE_c = sum_s (E^f_{s,c} - E^f_clean) / sum_s (E^base_{s,c} - E^base_clean), relative mCE likewise,
the means over the corruptions whose baseline sum is above 0. The baseline is LeNet-5 classic (ImageNet-C's
is AlexNet), so it scores 100. mCE below 100: fewer errors under corruption than the baseline; relative mCE
below 100: an accuracy that degrades less than the baseline's. A design's seeds are pooled: its error rates
are means over its seeds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BASELINE = "lenet5_classic"


def error_table(results: Sequence[dict]) -> tuple[np.ndarray, float, list[str]]:
    """Seeds' robustness.json contents -> (corruption x severity error rates, clean error rate, corruption
    names), means over the seeds."""
    names = list(results[0]["accuracy"])
    errors = np.mean(
        [
            [
                [1 - result["accuracy"][name][level] for level in sorted(result["accuracy"][name], key=int)]
                for name in names
            ]
            for result in results
        ],
        axis=0,
    )
    return errors, float(np.mean([1 - result["clean_accuracy"] for result in results])), names


def mce(errors: np.ndarray, baseline: np.ndarray) -> float | None:
    """100 x the mean over corruptions of the design's summed errors over the baseline's."""
    return _mean_ratio(errors.sum(axis=1), baseline.sum(axis=1))


def relative_mce(errors: np.ndarray, clean: float, baseline: np.ndarray, baseline_clean: float) -> float | None:
    """100 x the mean over corruptions of the design's error growth over the baseline's."""
    return _mean_ratio((errors - clean).sum(axis=1), (baseline - baseline_clean).sum(axis=1))


def _mean_ratio(design: np.ndarray, baseline: np.ndarray) -> float | None:
    """100 x mean(design / baseline) over the corruptions where the baseline has something to divide by (a
    corruption that costs the baseline nothing cannot normalize); None if there is none."""
    usable = baseline > 0
    return float(100 * np.mean(design[usable] / baseline[usable])) if usable.any() else None
