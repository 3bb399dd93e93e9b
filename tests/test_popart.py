"""PopArt against the papers' equations written out in numpy (van Hasselt et al. 2016;
Hessel et al. 2018): the normalised losses, the statistics' update, the head's rescaling that
preserves the values; the statistics all-reduced under `mirrored`; an XLA-compiled update."""

import numpy as np
import pytest
import tensorflow as tf

from impala_tf.distribute import make_strategy
from impala_tf.networks import Agent
from impala_tf.learning.optimizers import make_optimizer
from impala_tf.specs import LearnerBatch, Trajectory
from impala_tf.learning.train_step import POPART_MOMENTS, TrainStep, agent_input_from_trajectory
from test_vtrace import _log_softmax, reference_vtrace

A, N = 4, 3  # actions, tasks
SPEC = {"frame": tf.TensorSpec([6, 6, 1], tf.uint8), "task": tf.TensorSpec([], tf.int32)}
MU = np.array([1.0, -2.0, 0.5], np.float32)
SIGMA = np.array([2.0, 0.5, 3.0], np.float32)
TASKS = np.array([0, 2, 2, 0])  # per unroll; task 1 is absent from the batch
BETA = 0.1


def _trajectory(T=5, B=4, seed=0):
    rng = np.random.default_rng(seed)
    starts = rng.random([T + 1, B]) < 0.2
    discount = np.where(np.roll(starts, -1, axis=0) & (rng.random([T + 1, B]) < 0.5), 0.0, 1.0)
    return Trajectory(
        observation={"frame": tf.constant(rng.integers(0, 255, [T + 1, B, 6, 6, 1]), tf.uint8),
                     "task": tf.constant(np.tile(TASKS[:B], [T + 1, 1]), tf.int32)},
        action=tf.constant(rng.integers(0, A, [T + 1, B]), tf.int32),
        reward=tf.constant(rng.normal(scale=3.0, size=[T + 1, B]), tf.float32),
        discount=tf.constant(discount, tf.float32),
        episode_start=tf.constant(starts),
        behaviour_logits=tf.constant(rng.normal(size=[T + 1, B, A]), tf.float32),
    )


def _agent():
    return Agent(A, SPEC, torso="mlp", use_lstm=False, num_tasks=N)


def _step(agent, learning_rate=0.0, **kwargs):
    optimizer = make_optimizer(1e9, 1, learning_rate=learning_rate)
    kwargs.setdefault("reward_clipping", "none")
    return TrainStep(agent, optimizer, popart=True, popart_step_size=BETA, **kwargs)


def _set_statistics(step, mu=MU, sigma=SIGMA):
    step.popart.mu.assign(mu)
    step.popart.nu.assign(np.square(sigma) + np.square(mu))


def _reference(agent, trajectory, discount=0.99, baseline_cost=0.5, entropy_cost=0.01):
    """The losses and the statistics' update in numpy, from the agent's outputs."""
    out = agent.unroll(agent_input_from_trajectory(trajectory), ())[0]
    normalised = out.baseline.numpy()  # n(s), [T+1, B]
    logits = out.policy_logits.numpy()
    tasks = trajectory.observation["task"].numpy()
    sigma, mu = SIGMA[tasks], MU[tasks]
    values = sigma * normalised + mu  # V(s) = sigma n(s) + mu
    valid = ~trajectory.episode_start.numpy()[1:]
    actions = trajectory.action.numpy()[1:]
    log_pi = _log_softmax(logits[:-1])
    log_mu = _log_softmax(trajectory.behaviour_logits.numpy()[1:])
    pick = lambda lp: np.take_along_axis(lp, actions[..., None], -1)[..., 0]  # noqa: E731
    log_rhos = np.where(valid, pick(log_pi) - pick(log_mu), -np.inf)
    discounts = discount * trajectory.discount.numpy()[1:] * valid
    vs, pg_advantages = reference_vtrace(log_rhos, discounts, trajectory.reward.numpy()[1:],
                                         values[:-1], values[-1])
    w = valid.astype(np.float64)
    pg = -np.sum(pick(log_pi) * pg_advantages / sigma[:-1] * w)
    critic = 0.5 * np.sum(np.square((vs - mu[:-1]) / sigma[:-1] - normalised[:-1]) * w)
    neg_entropy = np.sum(np.sum(np.exp(log_pi) * log_pi, -1) * w)
    loss = pg + baseline_cost * critic + entropy_cost * neg_entropy
    # mu_i <- (1 - beta) mu_i + beta mean(v_s), nu_i likewise with v_s^2, over task i's steps.
    new_mu, new_nu = MU.astype(np.float64), np.square(SIGMA) + np.square(MU)
    new_nu = new_nu.astype(np.float64)
    for i in range(N):
        mask = (tasks[:-1] == i) & valid
        if mask.any():
            new_mu[i] = (1 - BETA) * MU[i] + BETA * vs[mask].mean()
            new_nu[i] = (1 - BETA) * new_nu[i] + BETA * np.square(vs[mask]).mean()
    new_sigma = np.clip(np.sqrt(new_nu - np.square(new_mu)), 1e-4, 1e6)
    return loss, vs, new_mu, new_nu, new_sigma, values


@pytest.mark.parametrize("tasks_change", [False, True])
def test_losses_are_the_papers_normalised_losses(tasks_change):
    """Each step in its own task's units; `tasks_change`: an unroll's task changes along it
    (an environment that draws a level per episode), so every step's statistics differ."""
    agent = _agent()
    step = _step(agent)
    _set_statistics(step)
    trajectory = _trajectory()
    if tasks_change:
        tasks = np.random.default_rng(3).integers(0, N, trajectory.action.shape)
        trajectory = trajectory._replace(observation={
            **trajectory.observation, "task": tf.constant(tasks, tf.int32)})
    loss, stats = step.compute_loss(LearnerBatch(trajectory, ()))
    want, vs, *_ = _reference(agent, trajectory)
    assert float(loss) == pytest.approx(want, rel=1e-4)
    # The moments are per task: count, sum and sum of squares of the unnormalised targets.
    moments = stats[POPART_MOMENTS].numpy()
    tasks = trajectory.observation["task"].numpy()[:-1]
    valid = ~trajectory.episode_start.numpy()[1:]
    for i in range(N):
        mask = (tasks == i) & valid
        np.testing.assert_allclose(moments[:, i], [mask.sum(), vs[mask].sum(),
                                                   np.square(vs[mask]).sum()], rtol=1e-4)


def test_identity_statistics_give_the_plain_loss():
    """With mu = 0 and sigma = 1 PopArt changes nothing: the same loss and gradients."""
    agent = _agent()
    trajectory = _trajectory(seed=3)
    plain = TrainStep(agent, make_optimizer(1e9, 1), reward_clipping="none")
    popart = _step(agent)
    batch = LearnerBatch(trajectory, ())
    g_plain, s_plain = plain.local_gradients(batch)
    g_popart, s_popart = popart.local_gradients(batch)
    assert float(s_popart["total_loss"]) == pytest.approx(float(s_plain["total_loss"]), rel=1e-5)
    for a, b in zip(g_plain, g_popart):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6)


def test_statistics_move_and_the_values_are_preserved():
    """With a zero learning rate only PopArt changes the head: the statistics follow the
    equations, the head is rescaled as the paper says, and sigma n(s) + mu is unchanged."""
    agent = _agent()
    step = _step(agent)
    _set_statistics(step)
    trajectory = _trajectory(seed=1)
    _, _, new_mu, new_nu, new_sigma, values_before = _reference(agent, trajectory)
    kernel = agent.baseline_head.kernel.numpy()
    bias = agent.baseline_head.bias.numpy()
    stats = step(LearnerBatch(trajectory, ()))
    assert float(stats["nonfinite_update"]) == 0.0
    np.testing.assert_allclose(step.popart.mu.numpy(), new_mu, rtol=1e-5, atol=1e-6)
    assert float(stats["popart_mu_mean"]) == pytest.approx(new_mu.mean(), rel=1e-5, abs=1e-6)
    assert float(stats["popart_sigma_mean"]) == pytest.approx(new_sigma.mean(), rel=1e-5)
    np.testing.assert_allclose(step.popart.nu.numpy(), new_nu, rtol=1e-5, atol=1e-6)
    assert step.popart.mu.numpy()[1] == MU[1]  # task 1 had no step in the batch
    np.testing.assert_allclose(agent.baseline_head.kernel.numpy(), kernel * SIGMA / new_sigma,
                               rtol=1e-5)
    np.testing.assert_allclose(agent.baseline_head.bias.numpy(),
                               (SIGMA * bias + MU - new_mu) / new_sigma, rtol=1e-5, atol=1e-6)
    out = agent.unroll(agent_input_from_trajectory(trajectory), ())[0]
    tasks = trajectory.observation["task"].numpy()
    values_after = new_sigma[tasks] * out.baseline.numpy() + new_mu[tasks]
    np.testing.assert_allclose(values_after, values_before, rtol=1e-4, atol=1e-4)
    assert not np.allclose(out.baseline.numpy(), (values_before - MU[tasks]) / SIGMA[tasks])


def test_a_skipped_update_leaves_the_statistics():
    agent = _agent()
    step = _step(agent)
    _set_statistics(step)
    trajectory = _trajectory(seed=2)
    logits = trajectory.behaviour_logits.numpy()
    logits[2, 1] = np.nan
    stats = step(LearnerBatch(trajectory._replace(behaviour_logits=tf.constant(logits)), ()))
    assert float(stats["nonfinite_update"]) == 1.0
    np.testing.assert_array_equal(step.popart.mu.numpy(), MU)


def test_single_task_agent_has_one_statistic():
    agent = Agent(A, {"frame": SPEC["frame"]}, torso="mlp", use_lstm=False)
    step = TrainStep(agent, make_optimizer(1e9, 1), popart=True, popart_step_size=0.5)
    trajectory = _trajectory(seed=4)
    trajectory = trajectory._replace(observation={"frame": trajectory.observation["frame"]})
    step(LearnerBatch(trajectory, ()))
    assert step.popart.mu.shape == (1,) and float(step.popart.mu[0]) != 0.0


def _mirrored_update(strategy, trajectory, weights):
    with strategy.scope():
        agent = _agent()
        agent.set_weights(weights)
        step = _step(agent, learning_rate=1e-3)
        _set_statistics(step)
    halves = [tf.nest.map_structure(lambda x, r=r: x[:, 2 * r:2 * r + 2], trajectory)
              for r in range(2)]
    distributed = strategy.experimental_distribute_values_from_function(
        lambda context: LearnerBatch(halves[context.replica_id_in_sync_group], ()))

    @tf.function
    def run(batch):
        return strategy.run(step.update, args=(batch,))

    run(distributed)
    return step, agent


def test_mirrored_statistics_are_all_reduced():
    """Two replicas, each holding a different mix of tasks: the statistics, the rescaled
    head and the weights equal those of one replica updating on the whole batch."""
    strategy = make_strategy("mirrored", num_cpu_devices=2)
    assert strategy.num_replicas_in_sync == 2
    trajectory = _trajectory(seed=5)
    trajectory.observation["task"] = tf.constant(np.tile([0, 2, 2, 1], [6, 1]), tf.int32)
    weights = _agent().get_weights()
    mirrored, mirrored_agent = _mirrored_update(strategy, trajectory, weights)
    single_agent = _agent()
    single_agent.set_weights(weights)
    single = _step(single_agent, learning_rate=1e-3)
    _set_statistics(single)
    single(LearnerBatch(trajectory, ()))
    assert not np.allclose(single.popart.mu.numpy(), MU)
    for name in ("mu", "nu"):
        np.testing.assert_allclose(getattr(mirrored.popart, name).numpy(),
                                   getattr(single.popart, name).numpy(), rtol=1e-5, atol=1e-6)
    for got, want in zip(mirrored_agent.get_weights(), single_agent.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_xla_update_matches_the_graph_update():
    trajectory = _trajectory(seed=6)
    results = []
    weights = _agent().get_weights()
    for jit_compile in (False, True):
        agent = _agent()
        agent.set_weights(weights)
        step = _step(agent, learning_rate=1e-3, jit_compile=jit_compile)
        _set_statistics(step)
        step(LearnerBatch(trajectory, ()))
        results.append((step.popart.mu.numpy(), step.popart.nu.numpy(), agent.get_weights()))
    for got, want in zip(results[1][:2], results[0][:2]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    for got, want in zip(results[1][2], results[0][2]):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(popart_step_size=0.0), "step_size"),
    (dict(popart_step_size=1.0 + 1e-9), "step_size"),
    (dict(popart_scale_bounds=(0.0, 1.0)), "scale_bounds"),
    (dict(popart_scale_bounds=(2.0, 1.0)), "scale_bounds"),
])
def test_bad_popart_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainStep(_agent(), make_optimizer(1e9, 1), popart=True, **kwargs)


def test_statistics_are_checkpointed_with_the_head(tmp_path):
    """The head is in the statistics' units: a resumed learner needs both."""
    from impala_tf.learning.checkpoints import Checkpointer
    agent = _agent()
    step = _step(agent)
    _set_statistics(step)
    Checkpointer(str(tmp_path), agent, step.optimizer, popart=step.popart).save()
    other_agent = _agent()
    other = _step(other_agent)
    assert Checkpointer(str(tmp_path), other_agent, other.optimizer,
                        popart=other.popart).restore_latest()
    np.testing.assert_array_equal(other.popart.mu.numpy(), MU)
    np.testing.assert_allclose(other.popart.scale().numpy(), SIGMA, rtol=1e-6)
    np.testing.assert_array_equal(other_agent.baseline_head.kernel.numpy(),
                                  agent.baseline_head.kernel.numpy())


def test_the_statistics_step_by_hand_for_a_task_seen_once():
    """`updated_moments` by hand: mu' = (1 - beta) mu + beta sum / count, nu' likewise with
    the squares; a task with a single valid step moves (count 1), an absent one (count 0)
    keeps its statistics."""
    from impala_tf.popart import PopArt
    popart = PopArt(3, step_size=0.25)
    popart.mu.assign([1.0, -2.0, 0.5])
    popart.nu.assign([5.0, 4.25, 9.25])
    moments = tf.constant([[1.0, 0.0, 4.0],    # count of valid steps
                           [3.0, 0.0, 2.0],    # sum of their targets
                           [9.0, 0.0, 8.0]])   # sum of their squares
    mu, nu = popart.updated_moments(moments)
    np.testing.assert_allclose(mu.numpy(), [0.75 * 1.0 + 0.25 * 3.0, -2.0,
                                            0.75 * 0.5 + 0.25 * 0.5], rtol=1e-6)
    np.testing.assert_allclose(nu.numpy(), [0.75 * 5.0 + 0.25 * 9.0, 4.25,
                                            0.75 * 9.25 + 0.25 * 2.0], rtol=1e-6)


def test_the_settings_at_their_edges_and_the_statistics_are_not_trained():
    """beta = 1 and sigma_min = sigma_max are allowed; the default beta is the paper's 3e-4
    (Hessel et al. 2018); mu and nu are statistics, never in the trainable variables."""
    from impala_tf.popart import PopArt
    edge = PopArt(2, step_size=1.0, scale_bounds=(0.5, 0.5))
    assert edge.step_size == 1.0 and edge.scale_bounds == (0.5, 0.5)
    assert PopArt(2).step_size == 3e-4
    assert edge.trainable_variables == () and len(edge.variables) == 2
