"""Pong's data path against independent references (issue 12's candidate faults).

Each test computes what the project should produce without the project's code and compares:
  * the frames, against a single `ale_py.ALEInterface` stepped and preprocessed by hand in
    numpy (action repeat 4, max over the last 2 grey screens, area resize to 84x84, stack of
    4): pixel-equal up to rounding, and through it the action mapping (index i -> the i-th
    action of the minimal set), since the two emulators stay in lock-step only if every
    action index means the same ALE action;
  * our paddle moving up for RIGHT and down for LEFT;
  * on a real Pong batch from the real `Actor` with a peaked, observation-dependent policy
    and LSTM: the learner's recomputed logits at t equal the behaviour logits stored at t+1
    (a one-step shift is far off), and the sampled actions follow those logits (a likelihood
    test that uniform actions fail);
  * the gradient of the paper's loss on that batch, made off-policy, against a numpy
    implementation of V-trace (the paper's equation 1 as a sum, not a recursion) and the loss;
  * parameters moved from a learner to an actor over loopback gRPC land on the right variables
    of an agent with many same-shaped kernels (deep torso), where a swap would pass a shape
    check.
"""

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf
from ale_py import ALEInterface, roms

from impala_tf import config
from impala_tf.learning.train_step import build_train_step
from impala_tf.acting.actor import Actor
from impala_tf.learning.batcher import stack_unrolls
from impala_tf.envs.atari import AtariBatchedEnv
from impala_tf.learning.process import learner_process
from impala_tf.networks.agent import AgentOutput
from impala_tf.rpc import codec, frame_packing
from impala_tf.learning.device_frames import PackedFrames
from impala_tf.specs import Trajectory, tensor_specs, unroll_wire_spec
from impala_tf.unroll import Unroll
from impala_tf.learning.train_step import agent_input_from_trajectory

PADDLE_COLUMNS = slice(72, 77)  # our (right, green) paddle in the 84x84 frame


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] weights of an area (box) resize: each output pixel averages the input
    pixels its footprint covers, in proportion to the overlap."""
    weights = np.zeros((n_out, n_in))
    scale = n_in / n_out
    for i in range(n_out):
        start, stop = i * scale, (i + 1) * scale
        for j in range(int(np.floor(start)), int(np.ceil(stop))):
            weights[i, j] = min(stop, j + 1) - max(start, j)
    return weights / scale


class ReferencePong:
    """One Pong game on a plain `ALEInterface`, preprocessed by hand as the paper says."""

    def __init__(self):
        self.ale = ALEInterface()
        self.ale.setInt("random_seed", 0)
        self.ale.setFloat("repeat_action_probability", 0.0)
        self.ale.setInt("frame_skip", 1)
        self.ale.loadROM(roms.get_rom_path("pong"))
        self.ale.reset_game()
        self.actions = self.ale.getMinimalActionSet()
        self._rows, self._cols = _area_weights(210, 84), _area_weights(160, 84)
        self.stack = [self._resize(self.ale.getScreenGrayscale())] * 4

    def _resize(self, screen: np.ndarray) -> np.ndarray:
        return self._rows @ screen.astype(np.float64) @ self._cols.T

    def step(self, action_index: int) -> np.ndarray:
        """Repeats the action 4 frames; returns the [84, 84, 4] stack, oldest first."""
        screens = []
        for _ in range(4):
            self.ale.act(self.actions[action_index])
            screens.append(self.ale.getScreenGrayscale().copy())
        self.stack = self.stack[1:] + [self._resize(np.maximum(screens[-2], screens[-1]))]
        return np.stack(self.stack, axis=-1)


def test_frames_and_actions_match_an_independent_preprocessing():
    # Every setting explicit: the module's batch fixture binds a 160-frame time limit.
    env = AtariBatchedEnv(1, game="pong", seed=0, noop_max=0, max_episode_frames=108_000)
    reference = ReferencePong()
    assert env.action_meanings == [str(a).split(".")[-1] for a in reference.actions]
    env.reset()
    rng = np.random.default_rng(0)
    moved = 0
    for t in range(300):
        action = int(rng.integers(6))
        want = reference.step(action)
        got = env.step(np.array([action])).observation["frame"][0].astype(np.float64)
        if t >= 3:  # the reference's stack starts from copies of the first screen
            np.testing.assert_array_less(np.abs(got - want), 1.0 + 1e-9, err_msg=f"step {t}")
        moved += np.abs(got[..., 3] - got[..., 2]).sum() > 0
    env.close()
    assert moved > 250  # the ball and paddles move between stacked frames


def _paddle_row(frame: np.ndarray) -> float:
    column = frame[14:77, PADDLE_COLUMNS].astype(np.float64)  # the court, no score or walls
    weight = np.clip(column - np.median(column), 0.0, None).sum(axis=1)
    return float((weight * np.arange(len(weight))).sum() / weight.sum())


def test_right_moves_our_paddle_up_and_left_moves_it_down():
    env = AtariBatchedEnv(1, game="pong", seed=0, noop_max=0, max_episode_frames=108_000)
    env.reset()
    right, left = env.action_meanings.index("RIGHT"), env.action_meanings.index("LEFT")
    for _ in range(60):  # let the game start; the paddle is drawn from here on
        frame = env.step(np.array([0])).observation["frame"][0, ..., 3]
    start = _paddle_row(frame)
    for _ in range(8):
        frame = env.step(np.array([right])).observation["frame"][0, ..., 3]
    up = _paddle_row(frame)
    for _ in range(16):
        frame = env.step(np.array([left])).observation["frame"][0, ..., 3]
    down = _paddle_row(frame)
    env.close()
    assert up < start - 5 and down > up + 10, (start, up, down)


@pytest.fixture(scope="module")
def pong_batch():
    """A real Pong batch from the real Actor (LSTM agent, paper config), with a peaked policy
    that depends on the screen, and time-limit episode boundaries every 40 steps.

    Seeded here: a module fixture is built before the per-test seed of conftest.py, so its
    agent's weights (and how peaked its policy is) would otherwise follow whatever test ran
    before it in the process (a random order once gave a mean top probability of 0.41)."""
    keras.utils.set_random_seed(0)
    config.parse_config(["atari/pong_shallow.gin"], [
        "Actor.num_envs = 4", "AtariBatchedEnv.max_episode_frames = 160"])
    actor = Actor("127.0.0.1:9", actor_index=0)  # never dialled: act() needs no learner
    agent = actor.agent
    agent.policy_head.kernel.assign(agent.policy_head.kernel * 40.0)
    messages = []
    for _ in range(6):
        messages += actor.act()
    wire_spec = codec.spec_from_tensor_specs(unroll_wire_spec(
        tensor_specs(actor.env.observation_spec()), actor.num_actions,
        actor.run_config.unroll_length, agent.initial_state(1)))
    unrolls = []
    for message in messages:  # the stacks rebuilt from each frame sent once
        fields, meta = codec.decode(message.whole, codec.UNROLL_MAGIC)
        fields = frame_packing.unpack(fields, wire_spec, actor.env.stacked_observations)
        unrolls.append(Unroll.from_flat(fields, meta["policy_version"], 0,
                                        agent.initial_state(1)))
    batch = stack_unrolls(unrolls, agent.initial_state(1)).batch
    batch = tf.nest.map_structure(tf.convert_to_tensor, batch)
    # The same unrolls as a learner on an accelerator batches them: frames, stacked in-graph.
    frame_major = stack_unrolls(unrolls, agent.initial_state(1),
                                frames_on_device=True).batch
    assert isinstance(frame_major.trajectory.observation["frame"], PackedFrames)
    yield actor, batch, tf.nest.map_structure(tf.convert_to_tensor, frame_major)
    actor.env.close()
    gin.clear_config()


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def test_the_learner_recomputes_the_behaviour_logits_step_by_step(pong_batch):
    actor, batch, _ = pong_batch
    trajectory = batch.trajectory
    outputs, _ = actor.agent.unroll(agent_input_from_trajectory(trajectory),
                                    batch.initial_core_state)
    valid = ~trajectory.episode_start.numpy()[1:]
    assert 0.9 < valid.mean() < 1.0  # episode boundaries inside the unrolls
    behaviour = trajectory.behaviour_logits.numpy()[1:]
    target = outputs.policy_logits.numpy()
    np.testing.assert_allclose(target[:-1][valid], behaviour[valid], atol=1e-4)
    # A one-step misalignment is far off with this policy.
    assert np.abs(target[1:][valid] - behaviour[valid]).max() > 0.5


def _likelihood_z(log_policy: np.ndarray, actions: np.ndarray) -> float:
    """z-score of sum_t log pi_t(a_t) against its mean (-H_t) and variance under a_t ~ pi_t."""
    policy = np.exp(log_policy)
    taken = np.take_along_axis(log_policy, actions[:, None], axis=1)[:, 0]
    entropy = -(policy * log_policy).sum(axis=1)
    variance = (policy * log_policy ** 2).sum(axis=1) - entropy ** 2
    return float((taken + entropy).sum() / np.sqrt(variance.sum()))


def test_sampled_actions_follow_the_behaviour_logits(pong_batch):
    _, batch, _ = pong_batch
    trajectory = batch.trajectory
    valid = ~trajectory.episode_start.numpy()[1:]
    log_mu = _log_softmax(trajectory.behaviour_logits.numpy()[1:])
    actions = trajectory.action.numpy()[1:]
    assert np.exp(log_mu).max(axis=-1).mean() > 0.45  # peaked (uniform: 0.17)
    assert abs(_likelihood_z(log_mu[valid], actions[valid])) < 4.0
    # The test can tell: actions drawn uniformly, or each one's index off by one, fail it.
    uniform = np.random.default_rng(0).integers(0, 6, actions.shape)
    assert _likelihood_z(log_mu[valid], uniform[valid]) < -6.0
    assert _likelihood_z(log_mu[valid], (actions[valid] + 1) % 6) < -6.0


def numpy_vtrace(log_rhos, discounts, rewards, values, bootstrap_value, rho_bar=1.0,
                 pg_rho_bar=1.0, c_bar=1.0):
    """V-trace targets by the paper's equation (1) written as a sum (lambda = 1):
    vs_s = V_s + sum_{t>=s} (prod_{i=s}^{t-1} gamma_i c_i) rho_t delta_t."""
    num_steps = len(rewards)
    rhos = np.exp(log_rhos)
    clipped, cs = np.minimum(rho_bar, rhos), np.minimum(c_bar, rhos)
    next_values = np.concatenate([values[1:], bootstrap_value[None]])
    deltas = clipped * (rewards + discounts * next_values - values)
    vs = np.array(values, np.float64)
    for s in range(num_steps):
        trace = np.ones_like(values[0])
        for t in range(s, num_steps):
            vs[s] += trace * deltas[t]
            trace = trace * discounts[t] * cs[t]
    next_vs = np.concatenate([vs[1:], bootstrap_value[None]])
    pg_advantages = np.minimum(pg_rho_bar, rhos) * (rewards + discounts * next_vs - values)
    return vs, pg_advantages


def numpy_loss_gradients(logits, values, bootstrap_value, actions, behaviour_logits, rewards,
                         env_discounts, valid, gamma=0.99, baseline_cost=0.5,
                         entropy_cost=0.01):
    """d(paper loss)/d(logits) [T, B, A], d/d(values) [T, B] (summed loss) and the V-trace
    targets vs [T, B], in numpy."""
    log_pi, log_mu = _log_softmax(logits), _log_softmax(behaviour_logits)
    one_hot = np.eye(logits.shape[-1])[actions]
    log_rhos = np.where(valid, (one_hot * (log_pi - log_mu)).sum(-1), -np.inf)
    discounts = gamma * env_discounts * valid
    vs, pg_advantages = numpy_vtrace(log_rhos, discounts, np.clip(rewards, -1, 1), values,
                                     bootstrap_value)
    policy = np.exp(log_pi)
    entropy = -(policy * log_pi).sum(-1, keepdims=True)
    mask = valid[..., None].astype(np.float64)
    # -log pi(a) * A: d/dlogits = -(onehot - pi) A;  -H: d/dlogits = pi (log pi + H).
    d_logits = mask * (-(one_hot - policy) * pg_advantages[..., None]
                       + entropy_cost * policy * (log_pi + entropy))
    d_values = -baseline_cost * (vs - values) * valid
    return d_logits, d_values, vs


class _FixedOutputs:
    """Stands in for the agent inside `TrainStep.compute_loss`: returns given outputs, so the
    tape can differentiate the loss with respect to them."""

    def __init__(self, logits, baseline):
        self.logits, self.baseline = logits, baseline

    def unroll(self, inputs, state):
        return AgentOutput(self.logits, self.baseline), state


def test_real_pong_gradient_matches_a_numpy_implementation_of_the_paper_loss(pong_batch):
    actor, batch, frame_major = pong_batch
    agent = actor.agent
    step = build_train_step(agent)
    # The learner has moved on from the behaviour policy: off-policy, rho != 1.
    agent.policy_head.kernel.assign(agent.policy_head.kernel * 1.3)
    try:
        inputs = agent_input_from_trajectory(batch.trajectory)
        outputs, _ = agent.unroll(inputs, batch.initial_core_state)
        trajectory = batch.trajectory
        valid = ~trajectory.episode_start.numpy()[1:]
        logits64 = outputs.policy_logits.numpy().astype(np.float64)
        baseline64 = outputs.baseline.numpy().astype(np.float64)
        want_logits, want_values, vs = numpy_loss_gradients(
            logits64[:-1], baseline64[:-1], baseline64[-1], trajectory.action.numpy()[1:],
            trajectory.behaviour_logits.numpy()[1:].astype(np.float64),
            trajectory.reward.numpy()[1:].astype(np.float64),
            trajectory.discount.numpy()[1:].astype(np.float64), valid)
        rhos = np.exp(_log_softmax(logits64[:-1]) - _log_softmax(
            trajectory.behaviour_logits.numpy()[1:].astype(np.float64)))
        assert np.std(rhos[valid]) > 0.05  # really off-policy

        logits = tf.Variable(outputs.policy_logits)
        baseline = tf.Variable(outputs.baseline)
        step.agent = _FixedOutputs(logits, baseline)
        with tf.GradientTape() as tape:
            loss, stats = step.compute_loss(batch)
        got_logits, got_baseline = tape.gradient(loss, [logits, baseline])
        # The critic's logged fit: the targets' mean and the variance of them it explains.
        errors = (vs - baseline64[:-1])[valid]
        assert float(stats["value_target_mean"]) == pytest.approx(vs[valid].mean(), abs=1e-4)
        assert float(stats["baseline_explained_variance"]) == pytest.approx(
            1.0 - errors.var() / vs[valid].var(), abs=1e-3)
        scale = np.abs(want_logits).max()
        np.testing.assert_allclose(got_logits.numpy()[:-1], want_logits, atol=1e-4 * scale)
        np.testing.assert_allclose(got_logits.numpy()[-1], 0.0)
        np.testing.assert_allclose(got_baseline.numpy()[:-1], want_values,
                                   atol=1e-4 * np.abs(want_values).max())
        np.testing.assert_allclose(got_baseline.numpy()[-1], 0.0)  # bootstrap: no gradient

        # Through the network: the parameters' gradient is the chain rule of the above.
        step.agent = agent
        variables = agent.trainable_variables
        with tf.GradientTape() as tape:
            loss, _ = step.compute_loss(batch)
        got = tape.gradient(loss, variables)
        with tf.GradientTape() as tape:
            out, _ = agent.unroll(inputs, batch.initial_core_state)
            surrogate = (tf.reduce_sum(out.policy_logits[:-1] * want_logits.astype(np.float32))
                         + tf.reduce_sum(out.baseline[:-1] * want_values.astype(np.float32)))
        want = tape.gradient(surrogate, variables)
        for variable, g, w in zip(variables, got, want):
            np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=2e-3,
                                       atol=2e-4 * np.abs(w.numpy()).max() + 1e-7,
                                       err_msg=variable.path)
        # Frames stacked in the graph (a learner on an accelerator) give the same update.
        with tf.GradientTape() as tape:
            device_loss, _ = step.compute_loss(frame_major)
        for variable, g, d in zip(variables, got, tape.gradient(device_loss, variables)):
            np.testing.assert_allclose(d.numpy(), g.numpy(), rtol=1e-6, atol=1e-9,
                                       err_msg=variable.path)
        assert float(device_loss) == pytest.approx(float(loss), rel=1e-6)
    finally:
        agent.policy_head.kernel.assign(agent.policy_head.kernel / 1.3)
        step.agent = agent


def test_parameters_reach_the_actor_by_variable_not_by_shape(tmp_path):
    """A deep torso has many same-shaped kernels; after a pull over loopback gRPC the actor's
    agent computes exactly what the learner's does, which a swap of two of them would not."""
    config.parse_config(["atari/pong_shallow.gin"], [
        "Agent.torso = 'deep'", "DeepTorso.sections = ((4, 2), (4, 2))", "DeepTorso.fc_size = 16",
        "Agent.lstm_size = 8", "Actor.num_envs = 1"])
    try:
        specs = tensor_specs(AtariBatchedEnv(1).observation_spec())
        learner = learner_process(specs, 6, str(tmp_path))
        learner.endpoint.batcher.stop()
        rng = np.random.default_rng(1)
        for variable in learner.agent.variables:
            variable.assign(rng.normal(0.0, 0.3, variable.shape).astype(np.float32))
        learner.learner.publish()
        actor = Actor(learner.address, actor_index=0)
        assert actor.refresh_parameters()
        frames = rng.integers(0, 256, (3, 2) + tuple(specs["frame"].shape), dtype=np.uint8)
        inputs = agent_input_from_trajectory(batch_inputs(frames))
        ours, _ = actor.agent.unroll(inputs, actor.agent.initial_state(2))
        theirs, _ = learner.agent.unroll(inputs, learner.agent.initial_state(2))
        np.testing.assert_allclose(ours.policy_logits, theirs.policy_logits, rtol=1e-5)
        np.testing.assert_allclose(ours.baseline, theirs.baseline, rtol=1e-5)
        # The comparison is swap-sensitive: exchange two same-shaped kernels and it fails.
        same = [v for v in actor.agent.variables if tuple(v.shape) == (3, 3, 4, 4)]
        assert len(same) >= 4
        first = same[0].numpy()
        same[0].assign(same[1])
        same[1].assign(first)
        swapped, _ = actor.agent.unroll(inputs, actor.agent.initial_state(2))
        assert np.abs(swapped.policy_logits.numpy() - theirs.policy_logits.numpy()).max() > 1e-3
        actor.close(flush=False)
        learner.close()
    finally:
        gin.clear_config()


def batch_inputs(frames: np.ndarray):
    """A `Trajectory` of [T, B] steps mid-episode with the given frames."""
    steps, batch = frames.shape[:2]
    return Trajectory(
        observation={"frame": tf.constant(frames)},
        action=tf.constant(np.arange(steps * batch).reshape(steps, batch) % 6, tf.int32),
        reward=tf.zeros([steps, batch]), discount=tf.ones([steps, batch]),
        episode_start=tf.zeros([steps, batch], tf.bool),
        behaviour_logits=tf.zeros([steps, batch, 6]))
