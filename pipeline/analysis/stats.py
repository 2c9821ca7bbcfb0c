"""The statistics of a comparison: which differences between designs are real, and how sure.

Pure functions of per-image correctness on one test set (NumPy and SciPy only), so that every
number in reports/compare.json can be recomputed from the predictions.csv files evaluate writes.

With several training seeds, a design's per-image score is the fraction of its seeds that got
the image right (0 or 1 with one seed). Both the interval and the test treat the test images as
the sample, each image counted once, and are conditional on the trained models: they say how
much the choice of test images could move the numbers. How much the training seed moves them
is the spread over seeds (`seed_summary`), reported beside them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import binomtest, ttest_ind

ALPHA = 0.05
CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0  # fixed: the same predictions give the same interval


def image_scores(correct: np.ndarray) -> np.ndarray:
    """(seeds, images) correctness -> per image, the fraction of seeds that got it right."""
    correct = np.asarray(correct, dtype=float)
    if correct.ndim != 2 or correct.size == 0:
        raise ValueError(f"expected a non-empty (seeds, images) array, got shape {correct.shape}")
    return correct.mean(axis=0)


def bootstrap_ci(
    scores: np.ndarray, confidence: float = CONFIDENCE, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `scores` (accuracy, averaged over seeds),
    resampling the test images with replacement.

    A resample matters only through how many of its images carry each distinct score, and those
    counts are multinomial: drawing them is the same bootstrap as drawing image indices, in
    O(resamples x distinct scores) instead of O(resamples x images).
    """
    scores = np.asarray(scores, dtype=float)
    values, counts = np.unique(scores, return_counts=True)
    draws = np.random.default_rng(seed).multinomial(len(scores), counts / len(scores), size=resamples)
    means = draws @ values / len(scores)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high)


def discordant(scores_a: np.ndarray, scores_b: np.ndarray) -> tuple[int, int]:
    """(images where a scores higher, images where b scores higher): McNemar's b and c with one seed."""
    scores_a, scores_b = np.asarray(scores_a), np.asarray(scores_b)
    if scores_a.shape != scores_b.shape:
        raise ValueError(f"paired scores must cover the same images, got {scores_a.shape} and {scores_b.shape}")
    return int((scores_a > scores_b).sum()), int((scores_b > scores_a).sum())


def mcnemar_exact(a_better: int, b_better: int) -> float:
    """Exact McNemar p-value: two-sided binomial test of the discordant pairs against 1/2.

    With several seeds per design it is the sign test on per-image scores, of which McNemar's
    exact test is the one-seed case. No discordant pair is no evidence: p = 1.
    """
    pairs = a_better + b_better
    if pairs == 0:
        return 1.0
    return float(binomtest(a_better, pairs, 0.5, alternative="two-sided").pvalue)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment (controls the family-wise error rate), in the input's order."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p, kind="stable")
    scaled = p[order] * (len(p) - np.arange(len(p)))
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted.tolist()


def seed_summary(values: Sequence[float]) -> dict[str, float | None]:
    """Mean, sample standard deviation (None with one seed: one value has no spread), min and max."""
    values = np.asarray(values, dtype=float)
    return {
        "mean": float(values.mean()),
        "std": float(values.std(ddof=1)) if len(values) > 1 else None,
        "min": float(values.min()),
        "max": float(values.max()),
    }


def seed_level_p(accuracies_a: Sequence[float], accuracies_b: Sequence[float]) -> float | None:
    """Welch's t-test of two designs' per-seed test accuracies: is the difference larger than what
    another training seed moves? Unconditional on the trained models, unlike McNemar's test, but
    weak with few seeds. None when a design has fewer than two seeds, or neither varies."""
    if min(len(accuracies_a), len(accuracies_b)) < 2:
        return None
    p = float(ttest_ind(accuracies_a, accuracies_b, equal_var=False).pvalue)
    return None if np.isnan(p) else p


def paired_comparison(scores: dict[str, np.ndarray], best: str, alpha: float = ALPHA) -> dict[str, dict]:
    """Every design against `best` (raw and Holm-adjusted p, and whether it ties: Holm p >= alpha),
    and the raw p-value of every pair.

    Holm's family is the comparisons with the best (the best itself has p = 1 and ties itself).
    """
    pairwise = {
        a: {b: 1.0 if a == b else mcnemar_exact(*discordant(scores[a], scores[b])) for b in scores} for a in scores
    }
    others = [name for name in scores if name != best]
    adjusted = dict(zip(others, holm([pairwise[name][best] for name in others])))
    vs_best = {
        name: {
            "p_value_vs_best": pairwise[name][best],
            "p_value_vs_best_holm": adjusted.get(name, 1.0),
            "ties_best": name == best or adjusted[name] >= alpha,
        }
        for name in scores
    }
    return {"vs_best": vs_best, "pairwise_p": pairwise}


def beats(challenger: np.ndarray, champion: np.ndarray, alpha: float = ALPHA) -> dict[str, float | bool | list[float]]:
    """Whether a challenger's per-image scores beat a champion's on the same test images: the exact McNemar p
    below `alpha` and the bootstrap interval of the accuracy difference (challenger minus champion) above 0.
    Both, so that neither many tiny differences nor one lucky interval moves a champion alone."""
    challenger, champion = np.asarray(challenger, float), np.asarray(champion, float)
    p = mcnemar_exact(*discordant(challenger, champion))
    low, high = bootstrap_ci(challenger - champion)  # the mean of per-image differences: the accuracy difference
    return {
        "p_value": p,
        "difference": float((challenger - champion).mean()),
        "difference_ci": [low, high],
        "beats": bool(p < alpha and low > 0),
    }
