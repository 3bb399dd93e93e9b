"""Seeds that do not repeat across a run's restarts.

An actor's environments and action sampling are seeded from `Actor.seed` and its index. A
fresh run (step 0) uses `seed + 1000 * actor_index`, so runs stay reproducible; an actor that
starts later in a run (the run resumed from a checkpoint, or the actor restarted) mixes in
the learner's step, so it does not replay the episodes and action draws it made from step 0.
"""

import numpy as np

_SEED_RANGE = 2**31 - 2**20  # environment i adds i to its actor's seed: stay in int32


def actor_seed(seed: int, actor_index: int, learner_step: int = 0) -> int:
    """The base seed of actor `actor_index` started at `learner_step` of a run seeded `seed`
    (its environment i gets this + i)."""
    if int(learner_step) == 0:
        return int(seed) + 1000 * int(actor_index)
    entropy = [int(seed) % 2**63, int(actor_index), int(learner_step)]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint32)[0]) % _SEED_RANGE
