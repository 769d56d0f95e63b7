"""The guaranteed thresholds: the guarantee by simulation against known score distributions, the
thresholds against a brute force, the infeasible cases, unknown labels and the tie rule."""

import math

import numpy as np
import pytest
from scipy import stats

from contracts.errors import UserInputError
from evaluation import conformal

ABNORMAL = stats.beta(5, 2)  # the true score distributions: every true rate is exact, not sampled
NORMAL = stats.beta(2, 5)
DRAWS = 2000
SIZE = 150  # calibration images of the class whose rate is bounded, per draw


def _allowed_exceedances(delta: float) -> float:
    """At most δ of the draws may fail; Monte-Carlo slack of 3 binomial standard errors on the count."""
    return DRAWS * delta + 3 * math.sqrt(DRAWS * delta * (1 - delta))


def _draw(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    labels = np.r_[np.ones(SIZE, int), np.zeros(SIZE, int)]
    return labels, np.r_[ABNORMAL.rvs(SIZE, random_state=rng), NORMAL.rvs(SIZE, random_state=rng)]


def test_the_rule_out_threshold_keeps_the_true_miss_rate_under_alpha():
    """Regression: the Clopper-Pearson bound replaced by the empirical rate k / n (the naive rule),
    or its quantile taken at δ (a lower bound) instead of 1 − δ."""
    alpha, delta = conformal.ALPHA, conformal.DELTA
    rng = np.random.default_rng(26)
    guaranteed = naive = 0
    for _ in range(DRAWS):
        labels, probs = _draw(rng)
        chosen = conformal.rule_out_threshold(labels, probs, alpha, delta)
        guaranteed += ABNORMAL.cdf(chosen.threshold) > alpha  # true P(p < t | abnormal)
        # naive: the highest threshold that reached the target on calibration (k misses below it)
        allowed = math.floor(alpha * SIZE)
        naive += ABNORMAL.cdf(np.sort(probs[labels == 1])[allowed]) > alpha
    assert guaranteed <= _allowed_exceedances(delta)
    assert naive > 3 * DRAWS * delta, naive  # about half the draws (a third would fail)


def test_the_rule_in_threshold_keeps_the_true_false_alarm_rate_under_beta():
    """Regression: the bound replaced by the empirical rate k / n, as for rule-out."""
    beta, delta = conformal.BETA, conformal.DELTA
    rng = np.random.default_rng(27)
    guaranteed = naive = 0
    for _ in range(DRAWS):
        labels, probs = _draw(rng)
        chosen = conformal.rule_in_threshold(labels, probs, beta, delta)
        guaranteed += NORMAL.sf(chosen.threshold) > beta  # true P(p >= t | normal)
        # naive: the lowest threshold that reached the target on calibration (k normals at or above)
        allowed = math.floor(beta * SIZE)
        naive += NORMAL.sf(np.sort(probs[labels == 0])[::-1][allowed - 1]) > beta
    assert guaranteed <= _allowed_exceedances(delta)
    assert naive > 3 * DRAWS * delta, naive


def _exact_upper(failures: int, trials: int, delta: float) -> float:
    """An independent one-sided (1 − δ) Clopper-Pearson bound: the upper end of scipy's two-sided
    exact interval at level 1 − 2δ."""
    if trials == 0:
        return 1.0
    return stats.binomtest(failures, trials).proportion_ci(1 - 2 * delta, method="exact").high


def _brute_force(labels, probs, target, delta, rule_out: bool):
    """Every candidate in order from the safe end, errors counted image by image; stop at the first
    failure. Returns (threshold, bound, errors ÷ used) of the last pass, None when none passes."""
    known = [(y, p) for y, p in zip(labels, probs) if y >= 0]
    scores = sorted({p for _, p in known})
    if rule_out:
        candidates = scores
        errors = [sum(1 for y, p in known if y == 1 and p < t) for t in candidates]
    else:
        candidates = [np.nextafter(scores[-1], math.inf)] + scores[::-1] if scores else []
        errors = [sum(1 for y, p in known if y == 0 and p >= t) for t in candidates]
    used = sum(1 for y, _ in known if y == (1 if rule_out else 0))
    kept = None
    for t, k in zip(candidates, errors):
        bound = _exact_upper(k, used, delta)
        if bound > target:
            break
        kept = (t, bound, k / used)
    return kept


def test_thresholds_equal_a_brute_force_with_an_independent_bound():
    """Regression: a miss counted at p <= t, the bound's quantile at 1 - δ/2, the sequence not stopped
    at the first failure, the rule-in sequence started at the highest score."""
    rng = np.random.default_rng(5)
    for trial in range(150):
        size = int(rng.integers(3, 90))
        labels = rng.choice([-1, 0, 1], size, p=[0.1, 0.3, 0.6] if trial % 2 else [0.1, 0.6, 0.3])
        probs = np.round(rng.beta(2, 2, size), 2)  # rounded: ties between and within classes
        target, delta = [(0.1, 0.2), (0.2, 0.1), (0.3, 0.05)][trial % 3]
        for rule_out, choose in ((True, conformal.rule_out_threshold), (False, conformal.rule_in_threshold)):
            got, want = choose(labels, probs, target, delta), _brute_force(labels, probs, target, delta,
                                                                           rule_out)
            if want is None:
                assert got.threshold is None and got.shortfall > 0, (trial, rule_out)
            else:
                assert got.threshold == want[0] and got.shortfall == 0, (trial, rule_out)
                assert got.bound == pytest.approx(want[1], rel=1e-9)
                assert got.empirical == pytest.approx(want[2])
    for trials in (0, 1, 7, 45, 150):
        for delta in (0.05, 0.1, 0.2):
            want = [_exact_upper(k, trials, delta) for k in range(trials + 1)]
            got = conformal.clopper_pearson_upper(np.arange(trials + 1), trials, delta)
            np.testing.assert_allclose(got, want, rtol=1e-9)
            assert conformal.clopper_pearson_upper(trials, trials, delta) == 1.0


def _positives_above_normals(positives: int, normals: int = 30):
    labels = np.r_[np.ones(positives, int), np.zeros(normals, int)]
    return labels, np.r_[np.linspace(0.6, 0.9, positives), np.linspace(0.1, 0.4, normals)]


def test_too_few_calibration_images_give_no_threshold_and_the_shortfall():
    """Regression: a shortfall off by one, the bound at k = n or n = 0 not defined as 1.0, an
    infeasible case answered with the lowest candidate instead of None."""
    alpha, beta, delta = conformal.ALPHA, conformal.BETA, conformal.DELTA
    needed = math.ceil(math.log(delta) / math.log(1 - alpha))  # zero misses: 1 - δ^(1/n) <= α
    assert needed == 45 == conformal.images_needed(alpha, delta)  # the "about 45 with no miss"
    for positives, shortfall in ((0, 45), (30, 15), (44, 1)):
        chosen = conformal.rule_out_threshold(*_positives_above_normals(positives), alpha, delta)
        assert (chosen.threshold, chosen.used, chosen.shortfall) == (None, positives, shortfall)
        assert chosen.bound == pytest.approx(_exact_upper(0, positives, delta))
    labels, probs = _positives_above_normals(45)
    chosen = conformal.rule_out_threshold(labels, probs, alpha, delta)
    assert (chosen.threshold, chosen.shortfall, chosen.empirical) == (0.6, 0, 0.0)  # the lowest positive
    assert chosen.bound == pytest.approx(1 - delta ** (1 / 45)) and chosen.bound <= alpha
    normals_needed = math.ceil(math.log(delta) / math.log(1 - beta))  # 22
    for normals in (0, 10, normals_needed - 1):
        labels, probs = _positives_above_normals(50, normals)
        chosen = conformal.rule_in_threshold(labels, probs, beta, delta)
        assert (chosen.threshold, chosen.shortfall) == (None, normals_needed - normals)
    assert conformal.rule_in_threshold(*_positives_above_normals(50, normals_needed), beta,
                                       delta).threshold == 0.6  # the lowest positive: no normal at or above


def test_unknown_labels_are_ignored():
    """Regression: the unknown (-1) labels not dropped before the search (their scores become
    candidates) or before `shares` (they join the cleared and prioritized groups)."""
    labels, probs = np.r_[np.ones(60, int), np.zeros(30, int)], np.r_[np.linspace(0.2, 0.8, 60),
                                                                          np.linspace(0.1, 0.9, 30)]
    unknown = np.r_[labels, [-1] * 4], np.r_[probs, [0.01, 0.02, 0.97, 0.99]]
    beta = 0.1  # 30 normals: zero false alarms pass, one fails, so the top candidate is chosen
    assert conformal.rule_in_threshold(*unknown, beta) == conformal.rule_in_threshold(labels, probs, beta)
    assert conformal.rule_in_threshold(labels, probs, beta).threshold == np.nextafter(0.9, 1)
    assert conformal.rule_out_threshold(*unknown).used == 60
    assert conformal.rule_out_threshold(*unknown) == conformal.rule_out_threshold(labels, probs)
    assert conformal.shares(*unknown, 0.3, 0.7) == conformal.shares(labels, probs, 0.3, 0.7)


def test_ties_follow_the_documented_rule():
    """Cleared is p < rule-out, prioritized is p >= rule-in. Regression: `<` made `<=` (or `>=` made
    `>`) in the search or in the masks."""
    labels = np.r_[np.ones(45, int), [0, 0]]  # 45 abnormal all scored 0.5: none is missed at t = 0.5
    assert conformal.rule_out_threshold(labels, np.r_[[0.5] * 45, [0.2, 0.8]]).threshold == 0.5
    labels = np.r_[np.zeros(22, int), [1, 1]]  # 22 normal at 0.5: all are false alarms at t = 0.5
    assert conformal.rule_in_threshold(labels, np.r_[[0.5] * 22, [0.2, 0.9]]).threshold == 0.9
    labels = np.array([1, 0, 1, 0, 0, 1, 1, -1])
    probs = np.array([0.1, 0.2, 0.3, 0.5, 0.7, 0.7, 0.9, 0.05])
    # by hand: cleared {0.1 (1), 0.2 (0)}; prioritized {0.7 (0), 0.7 (1), 0.9 (1)}
    assert conformal.shares(labels, probs, 0.3, 0.7) == conformal.Shares(2, 0.5, 3, 1 / 3)
    np.testing.assert_array_equal(conformal.is_cleared(probs, 0.3), [1, 1, 0, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(conformal.is_prioritized(probs, 0.7), [0, 0, 0, 0, 1, 1, 1, 0])
    none = conformal.shares(labels, probs, None, None)
    assert (none.cleared, none.prioritized) == (0, 0)
    assert math.isnan(none.abnormal_among_cleared) and math.isnan(none.normal_among_prioritized)


def test_bad_settings_and_mismatched_inputs_fail_in_one_line():
    """Regression: the range check of the target rate and δ dropped, or labels and probabilities of
    different lengths accepted."""
    labels, probs = _positives_above_normals(50)
    for alpha, delta in ((0.0, 0.1), (0.05, 1.0), (1.5, 0.1)):
        with pytest.raises(UserInputError, match="strictly between 0 and 1"):
            conformal.rule_out_threshold(labels, probs, alpha, delta)
    with pytest.raises(UserInputError, match="80 labels for 79 probabilities"):
        conformal.rule_in_threshold(labels, probs[1:])
