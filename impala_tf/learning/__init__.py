"""The learner side: the process that batches unrolls and updates the agent.

`learner` (the loop), `batcher` (unrolls into `[T+1, B, ...]` batches), `train_step` (one
V-trace actor-critic update), `optimizers`, `central_inference` (acting for environment
actors), `checkpoints` and `logdir_lock`.
"""
