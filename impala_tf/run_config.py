"""The run's shape: unroll length, batch size, frame budget, action repeats.

Frames are emulator frames, as in the paper: one agent step is `num_action_repeats` frames,
one learner update consumes `unroll_length * batch_size` agent steps.
"""

import dataclasses

import gin


@gin.configurable
@dataclasses.dataclass(frozen=True)
class RunConfig:
    """unroll_length T, batch_size B (unrolls per update), total_environment_frames of the
    run, num_action_repeats (frames per agent step)."""

    unroll_length: int = 20
    batch_size: int = 32
    total_environment_frames: float = 2e8
    num_action_repeats: int = 4

    def __post_init__(self):
        for name in ("unroll_length", "batch_size", "num_action_repeats"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"RunConfig.{name} must be >= 1, got {getattr(self, name)}.")
        if not self.total_environment_frames > 0:
            raise ValueError(
                "RunConfig.total_environment_frames must be positive, got "
                f"{self.total_environment_frames}."
            )

    @property
    def frames_per_update(self) -> int:
        """Environment frames consumed by one learner update."""
        return self.unroll_length * self.batch_size * self.num_action_repeats

    @property
    def total_updates(self) -> int:
        """Learner updates in the run (the learning rate reaches 0 after these)."""
        return int(self.total_environment_frames // self.frames_per_update)
