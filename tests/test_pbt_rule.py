"""The paper's PBT rule against hand computations: burn-in and the episode count, the copy
margin, and each hyperparameter multiplied by exactly 1.2, 1/1.2 or 1 with the right odds."""

import numpy as np
import pytest

from impala_tf.pbt.rule import ATARI_HYPERPARAMETERS, DMLAB_HYPERPARAMETERS, EvolutionRule

LR, ENTROPY, EPSILON, CLIP = ATARI_HYPERPARAMETERS


class Scripted:
    """A generator whose draws are given: `integers` answers from `indices`, `random` from
    `uniforms`, in order."""

    def __init__(self, indices=(), uniforms=()):
        self.indices, self.uniforms = list(indices), list(uniforms)

    def integers(self, high):
        value = self.indices.pop(0)
        assert 0 <= value < high
        return value

    def random(self):
        return self.uniforms.pop(0)


def test_no_step_during_burn_in_nor_before_the_episodes():
    rule = EvolutionRule()
    assert not rule.ready(frames=2e7 - 1, episodes_since_step=10_000)
    assert not rule.ready(frames=5e7, episodes_since_step=4_999)
    assert rule.ready(frames=2e7, episodes_since_step=5_000)


def test_a_copy_needs_more_than_the_margin():
    rule = EvolutionRule()
    scores = {"a": 0.40, "b": 0.45, "c": 0.4500001, "d": 0.30}
    # Others of "a" in name order: b, c, d.
    assert rule.donor("a", scores, Scripted(indices=[0])) == ("b", False)  # exactly 5%: no
    assert rule.donor("a", scores, Scripted(indices=[1])) == ("c", True)
    assert rule.donor("a", scores, Scripted(indices=[2])) == ("d", False)  # worse: never
    assert rule.donor("d", scores, Scripted(indices=[0])) == ("a", True)


def test_explore_multiplies_by_the_factor_its_inverse_or_one():
    rule = EvolutionRule(hyperparameters=ATARI_HYPERPARAMETERS)
    start = {LR: 6e-4, ENTROPY: 0.01, EPSILON: 0.01, CLIP: 40.0, "other": 7.0}
    new, factors = rule.explore(start, Scripted(uniforms=[0.1, 0.5, 0.9, 1 / 3]))
    assert factors == {LR: 1.2, ENTROPY: 1 / 1.2, EPSILON: 1.0, CLIP: 1 / 1.2}
    assert new == {LR: 6e-4 * 1.2, ENTROPY: 0.01 / 1.2, EPSILON: 0.01, CLIP: 40.0 / 1.2,
                   "other": 7.0}


def test_a_step_copies_the_donors_hyperparameters_before_exploring():
    rule = EvolutionRule()
    hyper = {"a": {LR: 1e-4, ENTROPY: 1e-3, EPSILON: 0.1},
             "b": {LR: 5e-4, ENTROPY: 2e-3, EPSILON: 0.01}}
    step = rule.step("a", {"a": 0.1, "b": 0.9}, hyper, Scripted([0], [0.9, 0.9, 0.0]))
    assert step.donor == "b"
    assert step.hyperparameters == {LR: 5e-4, ENTROPY: 2e-3, EPSILON: 0.01 * 1.2}
    kept = rule.step("b", {"a": 0.1, "b": 0.9}, hyper, Scripted([0], [0.5, 0.9, 0.9]))
    assert kept.donor is None  # not copied, explored all the same
    assert kept.hyperparameters == {LR: 5e-4 / 1.2, ENTROPY: 2e-3, EPSILON: 0.01}


def test_the_three_outcomes_are_equally_likely():
    rule = EvolutionRule(hyperparameters=("x",))
    rng = np.random.default_rng(0)
    factors = [rule.explore({"x": 1.0}, rng)[1]["x"] for _ in range(30_000)]
    for value in (1.2, 1 / 1.2, 1.0):
        assert abs(factors.count(value) / 30_000 - 1 / 3) < 0.01


def test_settings_out_of_range_are_named():
    with pytest.raises(ValueError, match="population_size = 1"):
        EvolutionRule(population_size=1)
    with pytest.raises(ValueError, match="perturb_probability = 0.6"):
        EvolutionRule(perturb_probability=0.6)
    with pytest.raises(ValueError, match="factor = 1.0"):
        EvolutionRule(factor=1.0)
    with pytest.raises(KeyError, match="make_optimizer.epsilon"):
        EvolutionRule().explore({LR: 1.0, ENTROPY: 1.0}, np.random.default_rng(0))
    assert DMLAB_HYPERPARAMETERS == ATARI_HYPERPARAMETERS[:3]


def test_scores_from_metrics_records_by_hand():
    """A member's score over two records: the mean return, and the mean capped
    human-normalised score (Atari: pong random -20.7, human 14.6; breakout 1.7, 30.5)."""
    from impala_tf.pbt.score import ScoreKeeper
    records = [
        {"episodes": 2, "episode_return_mean": 0.5,
         "episodes_per_level": {"pong": 1, "breakout": 1},
         "episode_return_per_level": {"pong": -3.05, "breakout": 60.0}},
        {"episodes": 2, "episode_return_mean": 1.5,
         "episodes_per_level": {"pong": 2}, "episode_return_per_level": {"pong": 14.6}},
        {"episodes": 0, "episode_return_mean": None},
    ]
    mean, atari = ScoreKeeper("mean_return"), ScoreKeeper("atari_mean_capped")
    for record in records:
        mean.add(record)
        atari.add(record)
    assert mean.score() == pytest.approx((2 * 0.5 + 2 * 1.5) / 4)
    pong = (-3.05 + 2 * 14.6) / 3  # 8.7167: 100 * (8.7167 + 20.7) / 35.3 = 83.33%
    expected_pong = 100 * (pong + 20.7) / (14.6 + 20.7)
    assert atari.score() == pytest.approx((expected_pong + 100.0) / 2 / 100)  # breakout capped
    dmlab = ScoreKeeper("dmlab30_mean_capped")
    dmlab.add({"episodes": 1, "episode_return_mean": 5.0,
               "episodes_per_level": {"contributed/dmlab30/rooms_collect_good_objects_train": 1},
               "episode_return_per_level": {
                   "contributed/dmlab30/rooms_collect_good_objects_train": 5.0}})
    assert dmlab.score() == pytest.approx((5.0 - 0.073) / (10 - 0.073))
    assert ScoreKeeper().score() is None
    with pytest.raises(ValueError, match="Population.score = 'median'"):
        ScoreKeeper("median")
