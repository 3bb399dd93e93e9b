"""Builds the learner's parts from the gin config and the environment's specs."""

from typing import Mapping, Optional

import tensorflow as tf

from impala_tf.networks.agent import Agent
from impala_tf.optimizers import make_optimizer
from impala_tf.run_config import RunConfig
from impala_tf.train_step import TrainStep


def build_agent(observation_spec: Mapping[str, tf.TensorSpec], num_actions: int,
                num_tasks: Optional[int] = None) -> Agent:
    """The `Agent` for these specs (`num_tasks`: `specs.num_tasks` of the environment's
    spec, for multi-task environments); its hyperparameters come from gin."""
    return Agent(num_actions=num_actions, observation_spec=observation_spec,
                 num_tasks=num_tasks)


def build_train_step(agent: Agent, run_config: Optional[RunConfig] = None) -> TrainStep:
    """The optimiser (decayed over `run_config`'s frames) and the update, from gin."""
    run_config = run_config or RunConfig()
    optimizer = make_optimizer(
        total_environment_frames=run_config.total_environment_frames,
        frames_per_update=run_config.frames_per_update,
    )
    return TrainStep(agent, optimizer)
