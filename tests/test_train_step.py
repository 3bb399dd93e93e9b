"""One learner update: it learns, it equals an independent actor-critic gradient on-policy,
it clips, and it compiles with XLA."""

import numpy as np
import pytest
import tensorflow as tf

from impala_tf.networks import Agent
from impala_tf.learning.optimizers import make_optimizer
from impala_tf.specs import LearnerBatch, Trajectory
from impala_tf.learning.train_step import TrainStep, agent_input_from_trajectory

SPEC = {"frame": tf.TensorSpec([24, 24, 1], tf.uint8)}
A = 3


def _trajectory(T, B, seed=0):
    """Random steps with dm_env episode boundaries: the step before an episode start is a
    LAST, ended by termination (discount 0) or a time limit (discount 1), alternately."""
    rng = np.random.default_rng(seed)
    starts = rng.random([T + 1, B]) < 0.2
    discount = np.ones([T + 1, B], np.float32)
    last = np.argwhere(starts[1:])
    for i, (t, b) in enumerate(last):
        discount[t, b] = float(i % 2)
    return Trajectory(
        observation={"frame": tf.constant(rng.integers(0, 255, [T + 1, B, 24, 24, 1]), tf.uint8)},
        action=tf.constant(rng.integers(0, A, [T + 1, B]), tf.int32),
        reward=tf.constant(rng.normal(size=[T + 1, B]), tf.float32),
        discount=tf.constant(discount),
        episode_start=tf.constant(starts),
        behaviour_logits=tf.constant(rng.normal(size=[T + 1, B, A]), tf.float32),
    )


def _agent(**kwargs):
    return Agent(A, SPEC, torso="shallow", lstm_size=16, **kwargs)


def _train_step(agent, jit_compile=False, **kwargs):
    optimizer = make_optimizer(total_environment_frames=1e9, frames_per_update=1)
    return TrainStep(agent, optimizer, jit_compile=jit_compile, **kwargs)


def test_learning_on_a_fixed_bandit_batch():
    """One-step episodes (FIRST, LAST, FIRST, ...): action 0 pays +1, the others -1, under a
    uniform behaviour policy.

    The critic's loss must fall and the policy must move to action 0. (The total loss is a
    surrogate whose policy term shrinks towards 0 as the advantages shrink, so it is the
    baseline loss and the policy that are checked.)"""
    agent = _agent()
    step = TrainStep(agent, make_optimizer(1e9, 1, learning_rate=0.005))
    trajectory = _trajectory(8, 4)
    first = (np.arange(9) % 2 == 0)[:, None].repeat(4, axis=1)
    trajectory = trajectory._replace(
        episode_start=tf.constant(first),
        discount=tf.constant(np.where(first, 1.0, 0.0), tf.float32),
        reward=tf.where(trajectory.action == 0, 1.0, -1.0) * (1.0 - first),
        behaviour_logits=tf.zeros_like(trajectory.behaviour_logits),
    )
    batch = LearnerBatch(trajectory, agent.initial_state(4))

    def prob_of_action_0():
        logits = agent.unroll(agent_input_from_trajectory(trajectory), batch.initial_core_state)[0]
        return float(tf.reduce_mean(tf.nn.softmax(logits.policy_logits)[0::2, :, 0]))

    first_loss = float(step.compute_loss(batch)[1]["baseline_loss"])
    first_prob = prob_of_action_0()
    for _ in range(60):
        step(batch)
    assert float(step.compute_loss(batch)[1]["baseline_loss"]) < 0.2 * first_loss
    assert first_prob < 0.5 and prob_of_action_0() > 0.8


def _independent_a2c_gradients(agent, trajectory, discount, baseline_cost, entropy_cost):
    """Advantage actor-critic with n-step returns, written without V-trace.

    A transition into an episode start (LAST -> FIRST) is no transition: it is left out, and
    the return at a LAST observation is its own value (what a time limit bootstraps from)."""
    inputs = agent_input_from_trajectory(trajectory)
    B = trajectory.reward.shape[1]
    values = agent.unroll(inputs, agent.initial_state(B))[0].baseline.numpy()
    rewards = np.clip(trajectory.reward.numpy()[1:], -1, 1)
    env_discounts = trajectory.discount.numpy()[1:]
    valid = ~trajectory.episode_start.numpy()[1:]
    T = rewards.shape[0]
    returns = np.zeros([T + 1, B], np.float32)
    returns[T] = values[T]
    for t in reversed(range(T)):
        bootstrapped = rewards[t] + discount * env_discounts[t] * returns[t + 1]
        returns[t] = np.where(valid[t], bootstrapped, values[t])
    returns = returns[:T]
    actions = trajectory.action.numpy()[1:]
    mask = valid.astype(np.float32)
    with tf.GradientTape() as tape:
        out = agent.unroll(inputs, agent.initial_state(B))[0]
        log_pi = tf.nn.log_softmax(out.policy_logits[:-1])
        log_pi_a = tf.reduce_sum(log_pi * tf.one_hot(actions, A), -1)
        advantages = tf.stop_gradient(returns - out.baseline[:-1])
        pg = -tf.reduce_sum(log_pi_a * advantages * mask)
        critic = 0.5 * tf.reduce_sum(tf.square(returns - out.baseline[:-1]) * mask)
        neg_entropy = tf.reduce_sum(tf.reduce_sum(tf.exp(log_pi) * log_pi, -1) * mask)
        loss = pg + baseline_cost * critic + entropy_cost * neg_entropy
    return tape.gradient(loss, agent.trainable_variables)


def test_on_policy_gradient_equals_advantage_actor_critic():
    agent = _agent()
    trajectory = _trajectory(6, 3, seed=4)
    outputs = agent.unroll(agent_input_from_trajectory(trajectory), agent.initial_state(3))[0]
    # On-policy: the behaviour logits that chose action[t] are the learner's logits at t-1.
    behaviour = tf.concat([outputs.policy_logits[:1], outputs.policy_logits[:-1]], axis=0)
    trajectory = trajectory._replace(behaviour_logits=behaviour)
    step = _train_step(agent, discount=0.9, baseline_cost=0.5, entropy_cost=0.01)
    got, stats = step.compute_gradients(LearnerBatch(trajectory, agent.initial_state(3)))
    assert float(stats["mean_rho"]) == pytest.approx(1.0, abs=1e-5)
    # The data holds both kinds of episode end, so both paths are checked.
    lasts = trajectory.episode_start.numpy()[1:]
    assert set(trajectory.discount.numpy()[:-1][lasts]) == {0.0, 1.0}
    want = _independent_a2c_gradients(agent, trajectory, 0.9, 0.5, 0.01)
    for g, w, v in zip(got, want, agent.trainable_variables):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=2e-3, atol=2e-5, err_msg=v.path)


def test_off_policy_gradient_differs_from_on_policy():
    """Guards the test above: V-trace's correction must matter when mu != pi."""
    agent = _agent()
    trajectory = _trajectory(6, 3, seed=4)
    step = _train_step(agent, discount=0.9)
    got, _ = step.compute_gradients(LearnerBatch(trajectory, agent.initial_state(3)))
    want = _independent_a2c_gradients(agent, trajectory, 0.9, 0.5, 0.01)
    diff = max(float(tf.reduce_max(tf.abs(g - w))) for g, w in zip(got, want))
    assert diff > 1e-3


def test_global_norm_clipping_and_tf1_rmsprop_update():
    agent = _agent(use_lstm=False)
    step = _train_step(agent, max_grad_norm=40.0)
    variables = agent.trainable_variables
    size = sum(int(np.prod(v.shape)) for v in variables)
    g = 80.0 / np.sqrt(size)  # every entry equal, global norm 80 -> clipped to 40
    before = [v.numpy().copy() for v in variables]
    stats = step.apply_gradients([tf.fill(v.shape, g) for v in variables])
    assert float(stats["grad_norm"]) == pytest.approx(80.0, rel=1e-4)
    lr = float(stats["learning_rate"])
    clipped = g / 2
    mean_square = 0.99 * 1.0 + 0.01 * clipped ** 2  # TF1 RMSProp: accumulator starts at 1
    want_delta = -lr * clipped / np.sqrt(mean_square + 0.01)
    for b, v in zip(before, variables):
        np.testing.assert_allclose(v.numpy() - b, want_delta, rtol=1e-3)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_epsilon_outside_the_root_is_pytorchs_rmsprop(momentum):
    """`epsilon_outside_sqrt=True, initial_mean_square=0` against torch.optim.RMSprop's update
    written out in numpy: v <- a v + (1 - a) g^2; b <- m b + g / (sqrt(v) + eps);
    theta <- theta - lr b (PyTorch keeps lr outside the buffer; constant lr, so the same)."""
    lr, eps = 0.01, 1e-3
    optimizer = make_optimizer(1e12, 1, learning_rate=lr, epsilon=eps, momentum=momentum,
                               initial_mean_square=0.0, epsilon_outside_sqrt=True)
    variable = tf.Variable(np.array([0.5, -1.0, 2.0, 0.0], np.float32))
    rng = np.random.default_rng(3)
    theta, v, b = variable.numpy().astype(np.float64), np.zeros(4), np.zeros(4)
    for scale in [1.0, 1e-4, 10.0]:  # sqrt(mean square) above, below and above epsilon
        g = rng.normal(size=4) * scale
        optimizer.apply_gradients([(tf.constant(g, tf.float32), variable)])
        v = 0.99 * v + 0.01 * g ** 2
        b = momentum * b + g / (np.sqrt(v) + eps)
        theta = theta - lr * b
        np.testing.assert_allclose(variable.numpy(), theta, rtol=1e-4, atol=1e-6)


def test_adam_is_kingma_and_bas_update():
    """`kind='adam'` against Adam written out in numpy (Keras' form: epsilon outside the square
    root of the uncorrected second moment, the bias corrections folded into the step size):
    m <- b1 m + (1 - b1) g; v <- b2 v + (1 - b2) g^2;
    theta <- theta - lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)."""
    lr, eps, b1, b2 = 0.01, 1e-3, 0.8, 0.95
    optimizer = make_optimizer(1e12, 1, learning_rate=lr, epsilon=eps, kind="adam",
                               beta_1=b1, beta_2=b2)
    variable = tf.Variable(np.array([0.5, -1.0, 2.0, 0.0], np.float32))
    rng = np.random.default_rng(4)
    theta, m, v = variable.numpy().astype(np.float64), np.zeros(4), np.zeros(4)
    for t, scale in enumerate([1.0, 1e-4, 10.0, 1.0], start=1):
        g = rng.normal(size=4) * scale
        optimizer.apply_gradients([(tf.constant(g, tf.float32), variable)])
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g ** 2
        theta = theta - lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m / (np.sqrt(v) + eps)
        np.testing.assert_allclose(variable.numpy(), theta, rtol=1e-4, atol=1e-6)


def test_an_unknown_optimiser_is_named():
    with pytest.raises(ValueError, match="make_optimizer.kind 'adamw'"):
        make_optimizer(1e6, 1, kind="adamw")


def test_each_optimiser_gets_its_own_epsilon_and_refuses_the_others_settings():
    assert make_optimizer(1e6, 1).epsilon == pytest.approx(0.01)  # TF1 RMSProp, the paper's
    assert make_optimizer(1e6, 1, kind="adam").epsilon == pytest.approx(1e-8)  # Adam's own
    assert make_optimizer(1e6, 1, kind="adam", epsilon=1e-3).epsilon == pytest.approx(1e-3)
    # Settings equal to their defaults pass (a base file's paper values), changed ones fail.
    make_optimizer(1e6, 1, kind="adam", decay=0.99, momentum=0.0)
    with pytest.raises(ValueError, match=r"kind = 'adam' does not use make_optimizer.decay "
                       r"= 0.95, make_optimizer.momentum = 0.9;"):
        make_optimizer(1e6, 1, kind="adam", decay=0.95, momentum=0.9)
    with pytest.raises(ValueError, match=r"kind = 'rmsprop' does not use "
                       r"make_optimizer.beta_2 = 0.99;"):
        make_optimizer(1e6, 1, beta_2=0.99)


def test_epsilon_placement_sets_the_step_on_tiny_gradients():
    """With the same epsilon, TF1's form steps lr * g / sqrt(ms + eps) and PyTorch's
    lr * g / (sqrt(ms) + eps): on a gradient far below epsilon, 1/sqrt(eps) times larger."""
    lr, eps, g = 0.01, 1e-3, 1e-5

    def first_step(**kwargs):
        optimizer = make_optimizer(1e12, 1, learning_rate=lr, epsilon=eps,
                                   initial_mean_square=0.0, **kwargs)
        w = tf.Variable([0.0])
        optimizer.apply_gradients([(tf.constant([g]), w)])
        return -float(w.numpy()[0])

    assert first_step() == pytest.approx(lr * g / np.sqrt(0.01 * g ** 2 + eps), rel=1e-3)
    assert first_step(epsilon_outside_sqrt=True) == pytest.approx(
        lr * g / (np.sqrt(0.01 * g ** 2) + eps), rel=1e-3)


def test_learning_rate_decays_linearly_to_zero():
    optimizer = make_optimizer(total_environment_frames=1000, frames_per_update=100,
                               learning_rate=0.0006)
    schedule = optimizer._learning_rate
    for update, want in [(0, 6e-4), (5, 3e-4), (9, 6e-5), (10, 0.0), (25, 0.0)]:
        assert float(schedule(update)) == pytest.approx(want, abs=1e-10)
    agent = _agent(use_lstm=False)
    step = TrainStep(agent, optimizer)
    batch = LearnerBatch(_trajectory(4, 2), ())
    rates = [float(step(batch)["learning_rate"]) for _ in range(3)]
    np.testing.assert_allclose(rates, [6e-4, 5.4e-4, 4.8e-4], rtol=1e-5)


def test_xla_update_matches_the_graph_update():
    agent_a, agent_b = _agent(), _agent()
    agent_b.set_weights(agent_a.get_weights())
    step_a = _train_step(agent_a, jit_compile=False)
    step_b = _train_step(agent_b, jit_compile=True)
    batch = LearnerBatch(_trajectory(5, 3), agent_a.initial_state(3))
    for _ in range(2):
        stats_a, stats_b = step_a(batch), step_b(batch)
    assert float(stats_a["total_loss"]) == pytest.approx(float(stats_b["total_loss"]), rel=1e-3)
    for a, b in zip(agent_a.get_weights(), agent_b.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("kwargs, message", [
    (dict(reward_clipping="abs"), "reward_clipping 'abs'"),
    (dict(loss_reduction="max"), "loss_reduction 'max'"),
])
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _train_step(_agent(use_lstm=False), **kwargs)


def _state(step):
    return ([w.copy() for w in step.agent.get_weights()],
            [np.array(v.numpy()) for v in step.optimizer.variables])


@pytest.mark.parametrize("jit_compile", [False, True])
def test_a_nonfinite_update_is_skipped_and_changes_nothing(jit_compile):
    agent = _agent()
    step = _train_step(agent, jit_compile=jit_compile, reward_clipping="none")
    clean = _trajectory(5, 3)
    poisoned = clean._replace(reward=tf.tensor_scatter_nd_update(
        clean.reward, [[2, 1]], [float("nan")]))
    weights, slots = _state(step)
    stats = step(LearnerBatch(poisoned, agent.initial_state(3)))
    assert float(stats["nonfinite_update"]) == 1.0
    assert not np.isfinite(float(stats["grad_norm"]))
    after_weights, after_slots = _state(step)
    for a, b in zip(weights + slots, after_weights + after_slots):
        np.testing.assert_array_equal(a, b)  # weights, RMSProp slots and step count
    stats = step(LearnerBatch(clean, agent.initial_state(3)))
    assert float(stats["nonfinite_update"]) == 0.0
    assert int(step.optimizer.iterations.numpy()) == 1
    assert max(np.abs(a - b).max() for a, b in zip(weights, agent.get_weights())) > 0


def test_a_nonfinite_update_is_traced_to_the_unrolls_behind_it():
    """`finite_per_unroll` answers per unroll, each alone: a NaN reward in unroll 1 and a
    reward past float32's range in unroll 3 (finite on the wire, infinite in the loss) are
    the two False of five; the weights are left as they were."""
    agent = _agent()
    step = _train_step(agent, reward_clipping="none")
    clean = _trajectory(4, 5)
    poisoned = clean._replace(reward=tf.tensor_scatter_nd_update(
        clean.reward, [[2, 1], [3, 3]], [float("nan"), 3e38]))
    weights = agent.get_weights()
    finite = step.finite_per_unroll(LearnerBatch(poisoned, agent.initial_state(5)))
    assert finite.dtype == np.bool_ and finite.tolist() == [True, False, True, False, True]
    assert step.finite_per_unroll(LearnerBatch(clean, agent.initial_state(5))).all()
    for a, b in zip(weights, agent.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_the_loss_and_its_stats_off_policy_with_every_vtrace_setting_against_numpy():
    """Off-policy, with V-trace's four settings away from their defaults and the mean
    reduction over valid steps: every loss term and every logged statistic equals the paper's
    equations written in numpy (V-trace by equation (1), `test_vtrace.reference_vtrace`)."""
    from test_vtrace import _log_softmax, reference_vtrace
    agent = _agent()
    trajectory = _trajectory(6, 4, seed=8)
    settings = dict(clip_rho_threshold=0.5, clip_pg_rho_threshold=2.0, clip_c_threshold=0.7,
                    lambda_=0.9)
    step = _train_step(agent, discount=0.95, baseline_cost=0.25, entropy_cost=0.02,
                       loss_reduction="mean", **settings)
    total, stats = step.compute_loss(LearnerBatch(trajectory, agent.initial_state(4)))

    out = agent.unroll(agent_input_from_trajectory(trajectory), agent.initial_state(4))[0]
    values = out.baseline.numpy().astype(np.float64)
    log_pi = _log_softmax(out.policy_logits.numpy()[:-1].astype(np.float64))
    log_mu = _log_softmax(trajectory.behaviour_logits.numpy()[1:].astype(np.float64))
    actions = trajectory.action.numpy()[1:]
    taken = np.take_along_axis(log_pi, actions[..., None], -1)[..., 0]
    valid = ~trajectory.episode_start.numpy()[1:]
    assert 0 < (~valid).sum() and valid.sum() > 1  # both kinds of step are in the batch
    log_rhos = np.where(valid, taken - np.take_along_axis(log_mu, actions[..., None], -1)[..., 0],
                        -np.inf)
    rewards = np.clip(trajectory.reward.numpy()[1:], -1, 1)
    discounts = 0.95 * trajectory.discount.numpy()[1:] * valid
    vs, pg_advantages = reference_vtrace(
        log_rhos, discounts, rewards, values[:-1], values[-1], clip_rho=0.5, clip_pg_rho=2.0,
        clip_c=0.7, lambda_=0.9)
    n = valid.sum()

    def mean(x):
        return float((x * valid).sum() / n)

    entropy = -(np.exp(log_pi) * log_pi).sum(-1)
    want = {"pg_loss": mean(-taken * pg_advantages),
            "baseline_loss": mean(0.5 * np.square(vs - values[:-1])),
            "entropy_loss": mean(-entropy), "entropy": mean(entropy),
            "mean_rho": float(np.exp(log_rhos).sum() / n), "mean_baseline": mean(values[:-1]),
            "value_target_mean": mean(vs),
            "value_target_std": mean(np.square(vs - mean(vs))) ** 0.5}
    want["baseline_explained_variance"] = 1 - mean(
        np.square(vs - values[:-1] - mean(vs - values[:-1]))) / want["value_target_std"] ** 2
    want["total_loss"] = want["pg_loss"] + 0.25 * want["baseline_loss"] + 0.02 * want[
        "entropy_loss"]
    assert set(stats) == set(want)
    for name, value in want.items():
        assert float(stats[name]) == pytest.approx(value, rel=1e-4, abs=1e-5), name
    assert float(total) == pytest.approx(want["total_loss"], rel=1e-4)


def test_replicas_all_reduce_their_gradients_summed_or_averaged():
    """Two (logical CPU) replicas, each with half of a batch without episode starts: their
    gradients are all-reduced to the whole batch's, summed with the 'sum' reduction and
    averaged over replicas with 'mean' (each replica's mean is over its own half)."""
    from impala_tf.distribute import make_strategy
    strategy = make_strategy("mirrored", num_cpu_devices=2)
    trajectory = _trajectory(3, 4, seed=9)
    trajectory = trajectory._replace(episode_start=tf.zeros_like(trajectory.episode_start))
    weights = Agent(A, SPEC, torso="mlp", use_lstm=False).get_weights()
    halves = [tf.nest.map_structure(lambda x, r=r: x[:, 2 * r:2 * r + 2], trajectory)
              for r in range(2)]
    for reduction in ("sum", "mean"):
        single_agent = Agent(A, SPEC, torso="mlp", use_lstm=False)
        single_agent.set_weights(weights)
        want, _ = _train_step(single_agent, loss_reduction=reduction).compute_gradients(
            LearnerBatch(trajectory, ()))
        with strategy.scope():
            agent = Agent(A, SPEC, torso="mlp", use_lstm=False)
            agent.set_weights(weights)
            step = _train_step(agent, loss_reduction=reduction)
        batch = strategy.experimental_distribute_values_from_function(
            lambda context: LearnerBatch(halves[context.replica_id_in_sync_group], ()))
        got = tf.function(lambda b: strategy.run(lambda x: step.compute_gradients(x)[0],
                                                 args=(b,)))(batch)
        for replica in range(2):
            for g, w in zip(got, want):
                np.testing.assert_allclose(strategy.experimental_local_results(g)[replica],
                                           w.numpy(), rtol=1e-4, atol=1e-6, err_msg=reduction)


def test_the_defaults_are_the_papers_atari_settings():
    """Espeholt et al. 2018, Table D.1 / G.1: discount 0.99, baseline cost 0.5, entropy cost
    0.01, gradients clipped at a global norm of 40, rho-bar = c-bar = 1 with lambda 1,
    rewards clipped to [-1, 1], summed losses; no PopArt and no XLA unless asked."""
    step = TrainStep(_agent(), make_optimizer(1e9, 1))
    assert (step.discount, step.baseline_cost, step.entropy_cost, step.max_grad_norm) == (
        0.99, 0.5, 0.01, 40.0)
    assert (step.clip_rho_threshold, step.clip_pg_rho_threshold, step.clip_c_threshold,
            step.lambda_) == (1.0, 1.0, 1.0, 1.0)
    assert (step.reward_clipping, step.loss_reduction) == ("abs_one", "sum")
    assert step.popart is None and step.jit_compile is False
