"""Test data: frame stacks that shift by one frame a step and restart where asked (shared by
the frame-stacking, packing and batching tests)."""

import numpy as np


def stacks(rng, steps=21, k=1, depth=4, restarts=(7, 15)):
    """[steps, 6, 5, depth*k] stacks that shift by one frame a step, restarting at
    `restarts` with older frames unrelated to the previous stack."""
    frames = rng.integers(0, 256, (steps + depth, 6, 5, k), dtype=np.uint8)
    stack = np.stack([np.concatenate(frames[t:t + depth], axis=-1) for t in range(steps)])
    for t in restarts:
        stack[t, ..., :-k] = rng.integers(0, 256, stack[t, ..., :-k].shape, dtype=np.uint8)
        for u in range(t + 1, steps):  # later steps shift from the restarted stack
            stack[u, ..., :-k] = stack[u - 1, ..., k:]
    return stack
