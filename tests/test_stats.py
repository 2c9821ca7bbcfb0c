"""The comparison's statistics on constructed predictions whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.analysis import stats


def correct_where(wrong: list[int], images: int = 20) -> np.ndarray:
    """One seed's correctness: right on every image but `wrong`."""
    correct = np.ones(images, dtype=bool)
    correct[wrong] = False
    return correct


def test_exact_mcnemar_worked_by_hand() -> None:
    # a misses images 0-6 and 8-9; b misses 7, 8 and 9. Discordant: b alone right on 0-6 (7
    # images), a alone right on 7 (1 image); 8 and 9 are concordant and do not count.
    a, b = correct_where([0, 1, 2, 3, 4, 5, 6, 8, 9]), correct_where([7, 8, 9])
    assert stats.discordant(a, b) == (1, 7)
    # Under H0 each discordant image favours a with probability 1/2: X ~ Binomial(8, 1/2).
    # P(X <= 1) = (C(8,0) + C(8,1)) / 2^8 = 9/256; two-sided, doubled: 18/256.
    assert stats.mcnemar_exact(1, 7) == pytest.approx(18 / 256, abs=1e-12)
    assert stats.mcnemar_exact(7, 1) == pytest.approx(18 / 256, abs=1e-12)  # symmetric
    assert stats.mcnemar_exact(0, 6) == pytest.approx(2 / 64, abs=1e-12)  # 2 x (1/2)^6
    assert stats.mcnemar_exact(4, 4) == 1.0 and stats.mcnemar_exact(0, 0) == 1.0  # no evidence either way


def test_several_seeds_count_each_image_once_by_its_seed_averaged_score() -> None:
    a = stats.image_scores(np.stack([correct_where([0, 1, 2]), correct_where([0, 1]), correct_where([0])]))
    b = stats.image_scores(np.stack([correct_where([3]), correct_where([3]), correct_where([])]))
    np.testing.assert_allclose(a[:4], [0, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(b[:4], [1, 1, 1, 1 / 3])
    assert stats.discordant(a, b) == (1, 3)  # image 3 favours a; images 0, 1, 2 favour b
    with pytest.raises(ValueError, match="same images"):
        stats.discordant(a, b[:5])


def test_holm_adjustment_known_values() -> None:
    # sorted 0.01, 0.03, 0.04 -> x3, x2, x1 = 0.03, 0.06, 0.04 -> running max 0.03, 0.06, 0.06
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert stats.holm([0.02]) == pytest.approx([0.02]) and stats.holm([]) == []


def test_seed_summary() -> None:
    summary = stats.seed_summary([0.98, 0.99, 1.0])
    assert summary["mean"] == pytest.approx(0.99) and summary["std"] == pytest.approx(0.01)  # sample std
    assert (summary["min"], summary["max"]) == (0.98, 1.0)
    assert stats.seed_summary([0.97])["std"] is None  # one seed has no spread to report


def test_bootstrap_95_percent_interval_covers_the_true_accuracy_95_times_in_100() -> None:
    true_accuracy, images = 0.9037, 1000
    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(100):  # 100 test sets drawn from a model whose accuracy is known
        low, high = stats.bootstrap_ci(rng.random(images) < true_accuracy)
        covered += low <= true_accuracy <= high
    assert 93 <= covered <= 97, covered


def test_bootstrap_is_the_image_resampling_bootstrap_and_is_seeded() -> None:
    """The multinomial shortcut gives the interval that resampling image indices gives."""
    rng = np.random.default_rng(1)
    scores = stats.image_scores(rng.random((3, 2000)) < 0.9)  # three seeds: scores 0, 1/3, 2/3, 1
    low, high = stats.bootstrap_ci(scores)
    naive = scores[rng.integers(0, len(scores), size=(4000, len(scores)))].mean(axis=1)
    assert np.quantile(naive, [0.025, 0.975]) == pytest.approx([low, high], abs=0.002)
    assert low < scores.mean() < high
    assert stats.bootstrap_ci(scores) == (low, high)  # same predictions, same interval
    assert stats.bootstrap_ci(np.ones(50)) == (1.0, 1.0)  # no error to resample: zero width (README says so)


def test_paired_comparison_marks_ties_with_the_best_after_holm() -> None:
    images = 200
    best = np.ones(images)
    best[:10] = 0  # 10 errors
    close = np.ones(images)
    close[5:17] = 0  # 12 errors: 5 images favour close (0-4), 7 favour best (10-16): p = 0.77
    far = np.ones(images)
    far[100:140] = 0  # 40 errors: 10 images favour far, 40 favour best: p < 0.0001
    result = stats.paired_comparison({"best": best, "close": close, "far": far}, "best")
    vs_best = result["vs_best"]
    assert vs_best["best"] == {"p_value_vs_best": 1.0, "p_value_vs_best_holm": 1.0, "ties_best": True}
    assert vs_best["close"]["p_value_vs_best"] == pytest.approx(stats.mcnemar_exact(5, 7))
    assert vs_best["close"]["ties_best"] and not vs_best["far"]["ties_best"]
    raw = [vs_best[name]["p_value_vs_best"] for name in ("close", "far")]
    assert [vs_best[name]["p_value_vs_best_holm"] for name in ("close", "far")] == pytest.approx(stats.holm(raw))
    pairwise = result["pairwise_p"]
    assert pairwise["close"]["far"] == pairwise["far"]["close"] and pairwise["far"]["far"] == 1.0
    assert set(pairwise) == {"best", "close", "far"}
