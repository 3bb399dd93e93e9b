"""The learner side: the process that batches unrolls and updates the agent.

`learner` (the loop), `batcher` (unrolls into `[T+1, B, ...]` batches), `train_step` (one
V-trace actor-critic update), `optimizers`, `central_inference` (acting for environment
actors), `checkpoints`, `metrics` (metrics.jsonl and TensorBoard), `faults` (what stops a
learner), `placement` (frame stacking on the device, the XLA plan) and `logdir_lock`.
"""
