"""The observation specs and action counts of the paper's environments, for learner-only runs
and timing scripts that do not build an environment (DMLab cannot run here) (Atari: 84x84 grey stack of 4, Pong's 6 actions;
DMLab: 96x72 RGB, the paper's 9 actions, instruction tokens for language levels)."""

import tensorflow as tf

from impala_tf.networks.instruction import DEFAULT_MAX_INSTRUCTION_LENGTH

ENV_SHAPES = {
    "atari": ({"frame": tf.TensorSpec([84, 84, 4], tf.uint8)}, 6),
    "dmlab": ({"frame": tf.TensorSpec([72, 96, 3], tf.uint8)}, 9),
    "dmlab_language": (
        {
            "frame": tf.TensorSpec([72, 96, 3], tf.uint8),
            "instruction": tf.TensorSpec([DEFAULT_MAX_INSTRUCTION_LENGTH], tf.int32),
        },
        9,
    ),
}
