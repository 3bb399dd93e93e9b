"""Actor seeds: a fresh run's are `seed + 1000 * actor_index` (reproducible); an actor started
later in a run mixes in the step, so a resume does not replay step 0's episodes."""

from impala_tf.seeding import actor_seed


def test_a_fresh_run_keeps_the_documented_seeds():
    assert [actor_seed(0, i) for i in range(3)] == [0, 1000, 2000]
    assert actor_seed(5, 2, learner_step=0) == 2005


def test_later_starts_differ_by_step_and_actor_and_stay_reproducible():
    seeds = {(i, step): actor_seed(0, i, step) for i in range(4) for step in (0, 1, 500, 10**6)}
    assert len(set(seeds.values())) == len(seeds)  # no two starts share a base seed
    assert actor_seed(0, 3, 500) == actor_seed(0, 3, 500)
    assert actor_seed(0, 3, 500) != actor_seed(1, 3, 500)
    # Environment i adds i to the base: the result stays a valid int32 seed.
    assert all(0 <= s < 2**31 - 2**20 for s in seeds.values())
