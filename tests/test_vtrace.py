"""V-trace against a direct implementation of the paper's equation (1)."""

import numpy as np
import pytest
import tensorflow as tf

from impala_tf import vtrace


def _log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def reference_vtrace(log_rhos, discounts, rewards, values, bootstrap_value,
                     clip_rho=1.0, clip_pg_rho=1.0, clip_c=1.0, lambda_=1.0):
    """Equation (1) written out term by term, O(T^3); per-step discounts gamma_t."""
    rhos = np.exp(log_rhos)
    clipped_rhos = rhos if clip_rho is None else np.minimum(clip_rho, rhos)
    cs = lambda_ * (rhos if clip_c is None else np.minimum(clip_c, rhos))
    T = log_rhos.shape[0]
    next_values = np.concatenate([values[1:], bootstrap_value[None]], axis=0)
    vs = np.zeros_like(values)
    for s in range(T):
        v_s = values[s].copy()
        for t in range(s, T):
            weight = np.ones_like(values[0])
            for i in range(s, t):
                weight *= discounts[i] * cs[i]
            delta_t = clipped_rhos[t] * (rewards[t] + discounts[t] * next_values[t] - values[t])
            v_s += weight * delta_t
        vs[s] = v_s
    next_vs = np.concatenate([vs[1:], bootstrap_value[None]], axis=0)
    pg_rhos = rhos if clip_pg_rho is None else np.minimum(clip_pg_rho, rhos)
    pg_advantages = pg_rhos * (rewards + discounts * next_vs - values)
    return vs, pg_advantages


def _random_inputs(T=7, B=5, seed=0):
    rng = np.random.default_rng(seed)
    discounts = np.where(rng.random((T, B)) < 0.2, 0.0, 0.9).astype(np.float32)  # episode ends
    return dict(
        log_rhos=rng.normal(scale=1.0, size=(T, B)).astype(np.float32),
        discounts=discounts,
        rewards=rng.normal(size=(T, B)).astype(np.float32),
        values=rng.normal(size=(T, B)).astype(np.float32),
        bootstrap_value=rng.normal(size=(B,)).astype(np.float32),
    )


CLIPPING_CASES = [
    dict(clip_rho_threshold=1.0, clip_pg_rho_threshold=1.0, clip_c_threshold=1.0, lambda_=1.0),
    dict(clip_rho_threshold=None, clip_pg_rho_threshold=None, clip_c_threshold=None, lambda_=1.0),
    dict(clip_rho_threshold=3.7, clip_pg_rho_threshold=2.2, clip_c_threshold=0.6, lambda_=1.0),
    dict(clip_rho_threshold=1.0, clip_pg_rho_threshold=1.0, clip_c_threshold=1.0, lambda_=0.5),
    dict(clip_rho_threshold=None, clip_pg_rho_threshold=1.0, clip_c_threshold=0.3, lambda_=0.9),
]


@pytest.mark.parametrize("case", CLIPPING_CASES)
def test_matches_equation_one(case):
    inputs = _random_inputs()
    out = vtrace.from_importance_weights(**inputs, **case)
    want_vs, want_pg = reference_vtrace(
        **inputs, clip_rho=case["clip_rho_threshold"], clip_pg_rho=case["clip_pg_rho_threshold"],
        clip_c=case["clip_c_threshold"], lambda_=case["lambda_"])
    np.testing.assert_allclose(out.vs.numpy(), want_vs, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.pg_advantages.numpy(), want_pg, rtol=1e-5, atol=1e-5)


def test_clipping_changes_the_result():
    """The clipping cases are not vacuous: large rhos make clipped and unclipped differ."""
    inputs = _random_inputs()
    clipped = vtrace.from_importance_weights(**inputs).vs.numpy()
    unclipped = vtrace.from_importance_weights(
        **inputs, clip_rho_threshold=None, clip_c_threshold=None).vs.numpy()
    assert np.abs(clipped - unclipped).max() > 1e-2


def test_episode_end_cuts_the_trace():
    """With discount 0 at step k, v_s for s <= k ignores everything after k."""
    inputs = _random_inputs(T=6, B=1)
    inputs["discounts"][:] = 0.9
    inputs["discounts"][2] = 0.0
    base = vtrace.from_importance_weights(**inputs).vs.numpy()
    changed = dict(inputs)
    changed["rewards"] = inputs["rewards"].copy()
    changed["rewards"][3:] += 10.0
    changed["bootstrap_value"] = inputs["bootstrap_value"] + 10.0
    after = vtrace.from_importance_weights(**changed).vs.numpy()
    np.testing.assert_allclose(after[:3], base[:3], rtol=1e-6)
    assert np.all(np.abs(after[3:] - base[3:]) > 1.0)


def test_on_policy_equals_n_step_bellman_target():
    T, B = 6, 4
    inputs = _random_inputs(T, B, seed=3)
    inputs["log_rhos"] = np.zeros((T, B), np.float32)
    out = vtrace.from_importance_weights(**inputs)
    # n-step target: discounted rewards to the end of the unroll, then the bootstrap value.
    rewards, discounts = inputs["rewards"], inputs["discounts"]
    want = np.zeros((T, B), np.float32)
    for s in range(T):
        total, scale = np.zeros(B), np.ones(B)
        for t in range(s, T):
            total += scale * rewards[t]
            scale *= discounts[t]
        want[s] = total + scale * inputs["bootstrap_value"]
    np.testing.assert_allclose(out.vs.numpy(), want, rtol=1e-5, atol=1e-5)
    next_vs = np.concatenate([want[1:], inputs["bootstrap_value"][None]])
    np.testing.assert_allclose(
        out.pg_advantages.numpy(), rewards + discounts * next_vs - inputs["values"],
        rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("clipping", [
    {},  # the paper's: rho-bar = pg-rho-bar = c-bar = 1, lambda 1
    dict(clip_rho_threshold=0.7, clip_pg_rho_threshold=1.6, clip_c_threshold=0.4, lambda_=0.8)])
def test_from_logits_equals_from_importance_weights(clipping):
    """Whatever clipping and lambda it is given, and logits in float64 (cast to float32)."""
    T, B, A = 5, 3, 4
    rng = np.random.default_rng(1)
    behaviour = rng.normal(size=(T, B, A))
    target = rng.normal(size=(T, B, A))
    actions = rng.integers(0, A, size=(T, B)).astype(np.int32)
    inputs = _random_inputs(T, B, seed=2)
    del inputs["log_rhos"]
    out = vtrace.from_logits(behaviour, target, actions, **inputs, **clipping)
    assert out.vs.dtype == out.log_rhos.dtype == tf.float32
    behaviour, target = behaviour.astype(np.float32), target.astype(np.float32)
    take = lambda logits: np.take_along_axis(_log_softmax(logits), actions[..., None], -1)[..., 0]
    log_rhos = take(target) - take(behaviour)
    np.testing.assert_allclose(out.log_rhos.numpy(), log_rhos, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.target_action_log_probs.numpy(), take(target), atol=1e-5)
    np.testing.assert_allclose(out.behaviour_action_log_probs.numpy(), take(behaviour), atol=1e-5)
    direct = vtrace.from_importance_weights(log_rhos=log_rhos, **inputs, **clipping)
    if clipping:  # and the clipping mattered
        paper = vtrace.from_importance_weights(log_rhos=log_rhos, **inputs)
        assert not np.allclose(paper.vs.numpy(), direct.vs.numpy(), atol=1e-4)
    np.testing.assert_allclose(out.vs.numpy(), direct.vs.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        out.pg_advantages.numpy(), direct.pg_advantages.numpy(), rtol=1e-5, atol=1e-5)


def test_targets_carry_no_gradient():
    inputs = {k: tf.constant(v) for k, v in _random_inputs().items()}
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(list(inputs.values()))
        out = vtrace.from_importance_weights(**inputs)
        total = tf.reduce_sum(out.vs) + tf.reduce_sum(out.pg_advantages)
    for name in ("values", "bootstrap_value", "rewards", "log_rhos"):
        assert tape.gradient(total, inputs[name]) is None, name


def test_from_logits_keeps_the_policy_gradient_path():
    T, B, A = 4, 2, 3
    target = tf.Variable(tf.random.normal([T, B, A]))
    inputs = _random_inputs(T, B)
    del inputs["log_rhos"]
    with tf.GradientTape() as tape:
        out = vtrace.from_logits(tf.zeros([T, B, A]), target, tf.zeros([T, B], tf.int32), **inputs)
        loss = tf.reduce_sum(out.target_action_log_probs)
    assert tape.gradient(loss, target) is not None


@pytest.mark.parametrize("jit_compile", [False, True])
def test_runs_inside_tf_function_and_xla(jit_compile):
    inputs = _random_inputs()
    eager = vtrace.from_importance_weights(**inputs)
    compiled = tf.function(vtrace.from_importance_weights, jit_compile=jit_compile)(
        **{k: tf.constant(v) for k, v in inputs.items()})
    np.testing.assert_allclose(compiled.vs.numpy(), eager.vs.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        compiled.pg_advantages.numpy(), eager.pg_advantages.numpy(), rtol=1e-5, atol=1e-5)


def _graph_ops(T):
    inputs = _random_inputs(T=T, B=2)
    fn = tf.function(vtrace.from_importance_weights)
    graph = fn.get_concrete_function(**{k: tf.constant(v) for k, v in inputs.items()}).graph
    ops = list(graph.get_operations())
    for function in graph.as_graph_def().library.function:
        ops.extend(function.node_def)
    return [getattr(op, "type", None) or op.op for op in ops]


def test_recursion_is_one_graph_loop_not_a_python_loop():
    short, long = _graph_ops(3), _graph_ops(40)
    assert len(short) == len(long), "graph size must not grow with T"
    assert any(op in ("While", "StatelessWhile") for op in long)


@pytest.mark.parametrize(
    "override, message",
    [
        (dict(log_rhos=np.zeros((7,), np.float32)),
         r"`log_rhos` must have rank 2 \[T, B\], got shape \[7\]"),
        (dict(discounts=np.zeros((7, 5, 1), np.float32)),
         r"`discounts` must have rank 2 \[T, B\], got shape \[7, 5, 1\]"),
        (dict(rewards=np.zeros((7,), np.float32)), r"`rewards` must have rank 2 \[T, B\]"),
        (dict(values=np.zeros((7,), np.float32)), r"`values` must have rank 2 \[T, B\]"),
        (dict(rewards=np.zeros((6, 5), np.float32)), "`rewards` has shape"),
        (dict(discounts=np.zeros((6, 5), np.float32)),
         r"`discounts` has shape \[6, 5\] but `log_rhos` has shape \[7, 5\]"),
        (dict(values=np.zeros((7, 4), np.float32)), r"`values` has shape \[7, 4\] but"),
        (dict(bootstrap_value=np.zeros((7, 5), np.float32)),
         r"`bootstrap_value` must have rank 1 \[B\], got shape \[7, 5\]"),
        (dict(bootstrap_value=np.zeros((4,), np.float32)),
         r"`bootstrap_value` has shape \[4\] but `values\[-1\]` has shape \[5\]"),
        (dict(clip_rho_threshold=-1.0), "`clip_rho_threshold` must be positive or None"),
        (dict(clip_pg_rho_threshold=0.0), "`clip_pg_rho_threshold` must be positive or None"),
        (dict(clip_c_threshold=0.0), "`clip_c_threshold` must be positive or None"),
    ],
)
def test_shape_mistakes_raise_clear_errors(override, message):
    inputs = _random_inputs()
    inputs.update(override)
    with pytest.raises(ValueError, match=message):
        vtrace.from_importance_weights(**inputs)


def test_from_logits_rejects_mismatched_logits():
    inputs = _random_inputs(T=4, B=2)
    del inputs["log_rhos"]
    with pytest.raises(ValueError, match=r"`target_policy_logits` has shape \[4, 2, 5\] but "
                       r"`behaviour_policy_logits` has shape \[4, 2, 3\]"):
        vtrace.from_logits(np.zeros((4, 2, 3), np.float32), np.zeros((4, 2, 5), np.float32),
                           np.zeros((4, 2), np.int32), **inputs)
    for wrong in ("behaviour_policy_logits", "target_policy_logits"):
        logits = {"behaviour_policy_logits": np.zeros((4, 2, 3), np.float32),
                  "target_policy_logits": np.zeros((4, 2, 3), np.float32)}
        logits[wrong] = np.zeros((4, 6), np.float32)
        with pytest.raises(ValueError, match=f"`{wrong}` must have rank 3 "
                           r"\[T, B, NUM_ACTIONS\], got shape \[4, 6\]"):
            vtrace.from_logits(actions=np.zeros((4, 2), np.int32), **logits, **inputs)


def test_the_log_probabilities_name_what_is_malformed():
    logits, actions = np.zeros((4, 2, 3), np.float32), np.zeros((4, 2), np.int32)
    for args, message in [
            ((logits[0], actions), r"`policy_logits` must have rank 3 \[T, B, NUM_ACTIONS\], "
                                   r"got shape \[2, 3\]"),
            ((logits, actions[0]), r"`actions` must have rank 2 \[T, B\], got shape \[2\]"),
            ((logits, actions[:3]), r"`actions` has shape \[3, 2\] but `policy_logits\[\.\.\., "
                                    r"0\]` has shape \[4, 2\]")]:
        with pytest.raises(ValueError, match=message):
            vtrace.log_probs_from_logits_and_actions(*args)


def test_float64_inputs_give_the_float32_results():
    """numpy's default float64 is taken and computed in float32, as the learner's tensors."""
    inputs = _random_inputs()
    single = vtrace.from_importance_weights(**inputs)
    double = vtrace.from_importance_weights(
        **{k: v.astype(np.float64) for k, v in inputs.items()})
    for got, want in zip(double, single):
        assert got.dtype == tf.float32
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    logits = np.random.default_rng(1).normal(size=(4, 2, 3))
    log_probs = vtrace.log_probs_from_logits_and_actions(logits, np.zeros((4, 2), np.int64))
    assert log_probs.dtype == tf.float32
