"""The actor side: processes that step environments and send unrolls to the learner.

`actor` (the paper's: K environments and batched inference with a lagging copy of the
policy), `env_actor` (central inference: environments only, no TensorFlow), `policy` (the
batched policy both the actor and the learner's central inference act with) and
`unroll_builder` (T+1 steps of K environments into unrolls), and `process`, the command
that runs an actor of either kind. Nothing here imports `impala_tf.learning` or the
learner's server.
"""

# Where the policy runs (`Launcher.inference`, `acting.process --inference`): in each actor
# process (the paper's), or on the learner for environment actors (SEED RL's).
INFERENCE_MODES = ("actor", "central")
