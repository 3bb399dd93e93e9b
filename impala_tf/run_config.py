"""The run's shape: unroll length, batch size, frame budget, action repeats.

Frames are emulator frames, as in the paper: one agent step is `num_action_repeats` frames,
one batch holds `unroll_length * batch_size` agent steps. The learner makes `num_epochs`
passes over each batch in `num_minibatches` slices of unrolls (PPO's and RLlib's sample
reuse, which V-trace corrects for); the paper's IMPALA is one pass, one slice: one update a
batch.
"""

import dataclasses

import gin


@gin.configurable
@dataclasses.dataclass(frozen=True)
class RunConfig:
    """unroll_length T, batch_size B (unrolls per batch), total_environment_frames of the
    run, num_action_repeats (frames per agent step), num_epochs (passes over each batch)
    and num_minibatches (each pass updates on this many slices of B / num_minibatches
    unrolls)."""

    unroll_length: int = 20
    batch_size: int = 32
    total_environment_frames: float = 2e8
    num_action_repeats: int = 4
    num_epochs: int = 1
    num_minibatches: int = 1

    def __post_init__(self):
        for name in ("unroll_length", "batch_size", "num_action_repeats", "num_epochs",
                     "num_minibatches"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"RunConfig.{name} must be >= 1, got {getattr(self, name)}.")
        if self.batch_size % self.num_minibatches:
            raise ValueError(
                f"RunConfig.batch_size {self.batch_size} does not split into "
                f"num_minibatches {self.num_minibatches} equal slices.")
        if not self.total_environment_frames > 0:
            raise ValueError(
                "RunConfig.total_environment_frames must be positive, got "
                f"{self.total_environment_frames}."
            )

    @property
    def frames_per_batch(self) -> int:
        """Environment frames in one batch of unrolls."""
        return self.unroll_length * self.batch_size * self.num_action_repeats

    @property
    def updates_per_batch(self) -> int:
        """Optimiser steps the learner makes on each batch."""
        return self.num_epochs * self.num_minibatches

    @property
    def frames_per_update(self) -> float:
        """Environment frames per optimiser step (a batch's frames, without reuse)."""
        return self.frames_per_batch / self.updates_per_batch

    @property
    def total_updates(self) -> int:
        """Optimiser steps in the run (the learning rate reaches 0 after these)."""
        return int(self.total_environment_frames // self.frames_per_batch) * self.updates_per_batch
