"""Runs one learner update of the shallow Pong agent on an accelerator and checks it ran there:

    python experiments/accelerator_step.py --device=GPU   # experiments/device_check.sh
    python experiments/accelerator_step.py --device=TPU   # experiments/tpu_check.sh
    python experiments/accelerator_step.py --device=CPU   # tests/test_distribute.py

GPU: the default strategy; the variables must live on the GPU. TPU: `make_strategy.kind =
'tpu'` (`--tpu_address`, default 'local'); the batch split over every core, the variables on
TPU cores. Either way one update must change every trainable variable, and on a TPU central
inference's step (`InferenceStep`) must run on the first core. Prints one line per check.
"""

import argparse
import sys

import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("GPU", "TPU", "CPU"), required=True)
    parser.add_argument("--tpu_address", default="local")
    parser.add_argument("--batch_size", type=int, default=32)
    args = parser.parse_args(argv)

    from impala_tf import quiet
    quiet.import_tensorflow()  # without TensorFlow's start-up notices
    import tensorflow as tf

    from impala_tf import config
    from impala_tf.distribute import batch_split, make_strategy
    from impala_tf.envs.factory import make_environment
    from impala_tf.learning.batcher import split_for_replicas
    from impala_tf.learning.inference_step import InferenceStep
    from impala_tf.learning.train_step import build_train_step
    from impala_tf.networks import build_agent
    from impala_tf.specs import tensor_specs
    from impala_tf.synthetic import synthetic_batch

    config.parse_config(["atari/pong_shallow.gin"])
    strategy = (make_strategy("tpu", tpu_address=args.tpu_address) if args.device == "TPU"
                else tf.distribute.get_strategy())
    split = batch_split(strategy, args.batch_size)
    print(f"{args.device}: {strategy.num_replicas_in_sync} replica(s), "
          f"{split.per_replica} unroll(s) per replica for B={args.batch_size}")
    env = make_environment(1)
    spec, num_actions = tensor_specs(env.observation_spec()), env.action_spec().num_values
    env.close()
    with strategy.scope():
        agent = build_agent(spec, num_actions)
        step = build_train_step(agent)
    batch = synthetic_batch(agent, spec, 20, args.batch_size)
    before = [v.numpy().copy() for v in agent.trainable_variables]

    @tf.function
    def update(distributed):
        return strategy.run(step.update, args=(distributed,))

    stats = update(split_for_replicas(strategy, batch))
    loss = strategy.reduce(tf.distribute.ReduceOp.SUM, stats["total_loss"], axis=None)
    devices = sorted({str(getattr(v, "value", v).device) for v in agent.trainable_variables})
    moved = sum(not np.array_equal(a, v.numpy())
                for a, v in zip(before, agent.trainable_variables))
    print(f"update: loss {float(loss):.3f}; {moved} of {len(before)} variables changed; "
          f"variables on {devices}")
    if moved != len(before):
        print("accelerator_step: not every variable changed", file=sys.stderr)
        return 1
    if args.device != "CPU" and not all(args.device in d for d in devices):
        print(f"accelerator_step: the variables are not on the {args.device}", file=sys.stderr)
        return 1
    inference = InferenceStep(agent, num_rows=8, strategy=strategy, seed=0,
                              jit_compile=args.device == "TPU")
    observation = {name: np.zeros([8] + s.shape.as_list(), s.dtype.as_numpy_dtype)
                   for name, s in spec.items()}
    actions, _ = inference(np.zeros(8, np.int32), np.zeros(8, np.float32), np.ones(8, bool),
                           observation, np.arange(8, dtype=np.int32), np.ones(8, bool))
    print(f"central inference: 8 actions on {inference.device or 'the default device'}; "
          f"actions {sorted(set(actions.tolist()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
