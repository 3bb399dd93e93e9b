"""What one learner update does on real data: the size of each loss term's gradient, how
much of the policy gradient is signal, and how far RMSProp moves the weights.

    python experiments/diagnose_update.py --gin_file=atari/pong_shallow.gin \
        [--logdir=logs/pong_shallow] [--frame_png=/tmp/frames.png]

Collects one batch (B environments x T+1 steps, after a warm-up) with the agent's own policy
(the latest checkpoint in `--logdir`, else a fresh agent), then prints:
- the global norm of the gradient of each term (pg, baseline_cost * baseline,
  entropy_cost * entropy) and of their sum, against `TrainStep.max_grad_norm`;
- the cosine between the policy gradients of the two halves of the batch: near 0 means the
  policy-gradient term is mostly noise at this batch size;
- the optimiser's step: the quantiles of the per-weight mean square (RMSProp) or second
  moment (Adam) from the checkpoint's optimiser against epsilon, and the norm of the step
  one update would take (Adam: from its stored moments).
`--frame_png` saves the first environment's stacked frames to look at the preprocessing.
"""

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags

import impala_tf  # noqa: F401
from impala_tf import config
from impala_tf.learning.train_step import build_train_step
from impala_tf.networks import build_agent
from impala_tf.learning.checkpoints import Checkpointer
from impala_tf.envs.factory import make_environment
from impala_tf.acting.policy import BatchedPolicy
from impala_tf.run_config import RunConfig
from impala_tf.specs import LearnerBatch, Trajectory, tensor_specs

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_multi_string("gin_file", [], "Experiment gin files.")
    flags.DEFINE_multi_string("gin_bindings", [], "Extra gin bindings.")
    flags.DEFINE_string("logdir", None, "Restore the latest checkpoint from here (optional).")
    flags.DEFINE_integer("warmup_steps", 200, "Agent steps before the batch is collected.")
    flags.DEFINE_string("frame_png", None, "Save env 0's stacked frames to this PNG.")
    flags.DEFINE_integer("fixed_batch_updates", 0, "Then apply this many updates to the same batch, "
                         "printing the live torso units and the losses every 25.")


def collect_batch(env, policy, num_actions, unroll_length, warmup_steps):
    """One `LearnerBatch` of `[T+1, B]` steps acted by `policy` after `warmup_steps`."""
    k = env.num_envs
    timestep = env.reset()
    state = policy.initial_state(k)
    prev_actions = np.zeros(k, np.int32)
    prev_logits = np.zeros([k, num_actions], np.float32)
    for _ in range(warmup_steps):
        step, state = policy(prev_actions, timestep, state)
        timestep = env.step(step.actions)
        prev_actions, prev_logits = step.actions, step.policy_logits
    initial_state = state
    steps = []
    for t in range(unroll_length + 1):
        steps.append((timestep, prev_actions, prev_logits))
        if t < unroll_length:
            step, state = policy(prev_actions, timestep, state)
            timestep = env.step(step.actions)
            prev_actions, prev_logits = step.actions, step.policy_logits
    observation = {name: np.stack([s[0].observation[name] for s in steps])
                   for name in steps[0][0].observation}
    trajectory = Trajectory(
        observation,
        np.stack([s[1] for s in steps]).astype(np.int32),
        np.stack([s[0].reward for s in steps]).astype(np.float32),
        np.stack([s[0].discount for s in steps]).astype(np.float32),
        np.stack([s[0].first() for s in steps]),
        np.stack([s[2] for s in steps]).astype(np.float32),
    )
    return LearnerBatch(tf.nest.map_structure(tf.convert_to_tensor, trajectory), initial_state)


def global_norm(grads):
    return float(tf.linalg.global_norm([g for g in grads if g is not None]))


def flat(grads, variables):
    return np.concatenate([(np.zeros(v.shape) if g is None else g.numpy()).ravel()
                           for g, v in zip(grads, variables)])


def cosine(a, b, variables):
    a, b = flat(a, variables), flat(b, variables)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def term_gradients(train_step, batch):
    """Gradient of each weighted loss term, as name -> list of tensors."""
    variables = train_step.agent.trainable_variables
    with tf.GradientTape(persistent=True) as tape:
        _, stats = train_step.compute_loss(batch)
        terms = {
            "pg": stats["pg_loss"],
            "baseline": train_step.baseline_cost * stats["baseline_loss"],
            "entropy": train_step.entropy_cost * stats["entropy_loss"],
        }
        terms["total"] = terms["pg"] + terms["baseline"] + terms["entropy"]
    grads = {name: tape.gradient(term, variables) for name, term in terms.items()}
    return grads, stats


def live_units(agent, batch) -> str:
    """How much of the torso's ReLU output is ever non-zero on this batch."""
    frame = batch.trajectory.observation["frame"]
    features = agent.torso(tf.reshape(frame, [-1] + frame.shape[2:].as_list())).numpy()
    return (f"{100 * np.mean(features > 0):.1f}% of values > 0; "
            f"{100 * np.mean((features > 0).any(axis=0)):.1f}% of the {features.shape[1]} units "
            "are > 0 on some step of the batch")


def half(batch, part):
    b = batch.trajectory.action.shape[1] // 2
    sl = slice(0, b) if part == 0 else slice(b, None)
    trajectory = tf.nest.map_structure(lambda x: x[:, sl], batch.trajectory)
    core = tf.nest.map_structure(lambda x: x[sl], batch.initial_core_state)
    return LearnerBatch(trajectory, core)


def main(argv):
    del argv
    config.parse_config(FLAGS.gin_file, FLAGS.gin_bindings)
    run_config = RunConfig()
    env = make_environment(run_config.batch_size, seed=123)
    num_actions = env.action_spec().num_values
    agent = build_agent(tensor_specs(env.observation_spec()), num_actions)
    train_step = build_train_step(agent, run_config)
    restored = None
    if FLAGS.logdir:
        restored = Checkpointer(FLAGS.logdir, agent, train_step.optimizer).restore_latest()
    print(f"agent: {'checkpoint ' + restored if restored else 'fresh initialisation'}")
    policy = BatchedPolicy(agent, seed=7)
    batch = collect_batch(env, policy, num_actions, run_config.unroll_length, FLAGS.warmup_steps)
    if FLAGS.frame_png:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        frames = batch.trajectory.observation["frame"][0, 0].numpy()
        fig, axes = plt.subplots(1, frames.shape[-1], figsize=(3 * frames.shape[-1], 3))
        for i, ax in enumerate(np.atleast_1d(axes)):
            ax.imshow(frames[..., i], cmap="gray", vmin=0, vmax=255)
            ax.set_title(f"stack {i}")
            ax.axis("off")
        fig.savefig(FLAGS.frame_png, dpi=80)
        print(f"frames of env 0 -> {FLAGS.frame_png}")

    rewards = batch.trajectory.reward[1:].numpy()
    print(f"batch: T={run_config.unroll_length} B={run_config.batch_size}; "
          f"nonzero rewards {int((rewards != 0).sum())}, sum {rewards.sum():+.0f}")
    grads, stats = term_gradients(train_step, batch)
    print(f"entropy {float(stats['entropy']):.3f}  mean_baseline "
          f"{float(stats['mean_baseline']):+.3f}  mean_rho {float(stats['mean_rho']):.3f}")
    for name in ("pg", "baseline", "entropy", "total"):
        print(f"grad norm {name:9s} {global_norm(grads[name]):10.3f}")
    print(f"max_grad_norm {train_step.max_grad_norm}")
    pg_halves = [term_gradients(train_step, half(batch, p))[0]["pg"] for p in (0, 1)]
    print(f"cosine(pg grad of half 0, half 1) = {cosine(*pg_halves, agent.trainable_variables):+.3f}")
    print(f"cosine(pg grad, entropy grad)     = {cosine(grads['pg'], grads['entropy'], agent.trainable_variables):+.3f}")

    print(f"torso output: {live_units(agent, batch)}")
    optimizer = train_step.optimizer
    is_adam = isinstance(optimizer, keras.optimizers.Adam)
    second_moment = "Adam second moment" if is_adam else "RMSProp mean square"
    print(f"per variable: shape, RMS of the total gradient, median {second_moment}")
    for variable, gradient, velocity in zip(agent.trainable_variables, grads["total"],
                                            train_step.optimizer._velocities):
        rms = 0.0 if gradient is None else float(tf.sqrt(tf.reduce_mean(tf.square(gradient))))
        print(f"  {variable.path:55s} {str(tuple(variable.shape)):18s} {rms:9.2e} "
              f"{float(np.median(velocity.numpy())):9.2e}")
    epsilon = float(optimizer.epsilon)
    ms = np.concatenate([v.numpy().ravel() for v in optimizer._velocities])
    quantiles = np.quantile(ms, [0.1, 0.5, 0.9, 0.99])
    # Epsilon inside the root (TF1) dominates where ms < epsilon; outside it (PyTorch's
    # RMSProp, Adam), where sqrt(ms) < epsilon: there the step is lr * g / epsilon, SGD's.
    outside = is_adam or getattr(optimizer, "epsilon_outside_sqrt", False)
    below = np.sqrt(ms) < epsilon if outside else ms < epsilon
    print(f"{second_moment} quantiles (10/50/90/99%): "
          + " ".join(f"{q:.2e}" for q in quantiles) + f"; epsilon {epsilon:g}; "
          f"{100 * np.mean(below):.1f}% of weights have "
          f"{'sqrt(ms)' if outside else 'ms'} < epsilon")
    if is_adam:  # lr * m / (sqrt(v) + eps) from the stored moments (bias corrections ~1)
        lr = float(train_step.current_learning_rate())
        steps = [lr * m.numpy() / (np.sqrt(v.numpy()) + epsilon)
                 for m, v in zip(optimizer._momentums, optimizer._velocities)]
        print_step_norm(agent, steps, lr)
    else:
        one_rmsprop_update(train_step, agent, grads["total"], optimizer, epsilon)
    for i in range(1, FLAGS.fixed_batch_updates + 1):
        stats = train_step(batch)
        if i % 25 == 0:
            print(f"update {i:4d} on the fixed batch: baseline loss "
                  f"{float(stats['baseline_loss']):9.3f}, entropy {float(stats['entropy']):.3f}, "
                  f"grad norm {float(stats['grad_norm']):7.2f}; torso {live_units(agent, batch)}")
    env.close()


def one_rmsprop_update(train_step, agent, total, optimizer, epsilon) -> None:
    """Prints the norm of the step one RMSProp update would take, against the weights'."""
    norm = global_norm(total)
    scale = min(1.0, train_step.max_grad_norm / norm) if train_step.max_grad_norm else 1.0
    lr = float(train_step.current_learning_rate())
    outside = getattr(optimizer, "epsilon_outside_sqrt", False)  # PyTorch's form

    def denominator(ms):
        return np.sqrt(ms) + epsilon if outside else np.sqrt(ms + epsilon)

    steps = [lr * scale * g / denominator(v.numpy())
             for g, v in zip(total, optimizer._velocities)]
    print_step_norm(agent, steps, lr)


def print_step_norm(agent, steps, lr) -> None:
    """Prints the norm of one update's `steps` (one array per variable) against the weights'."""
    weights = np.concatenate([w.numpy().ravel() for w in agent.trainable_variables])
    step_norm = float(np.sqrt(sum(np.sum(np.square(s)) for s in steps)))
    print(f"one update: lr {lr:.2e}, step norm {step_norm:.3e}, "
          f"weight norm {np.linalg.norm(weights):.2f} (ratio {step_norm / np.linalg.norm(weights):.2e})")


if __name__ == "__main__":
    define_flags()
    app.run(main)
