"""An LSTM whose state can be reset per batch element: the agent's core and the
instruction encoder's recurrence.

The input projection of a whole unroll is one matmul over `[T * B, F]`; only the recurrent
part runs step by step, in a `tf.scan` (a graph while loop that XLA compiles).
Gates follow Keras' order (i, f, g, o) with the forget-gate bias initialised to 1.
"""

from typing import NamedTuple, Optional

import keras
import tensorflow as tf


class LSTMState(NamedTuple):
    """Hidden and cell state, float32 `[B, units]` each."""

    h: tf.Tensor
    c: tf.Tensor


def _forget_bias_one(shape, dtype=None):
    units = shape[0] // 4
    return tf.concat(
        [tf.zeros([units]), tf.ones([units]), tf.zeros([2 * units])], axis=0
    )


class ResettableLSTM(keras.layers.Layer):
    """LSTM with `step` (one time step) and `unroll` (`[T, B, F]`) entry points.

    `reset[t, b]` zeroes the state of element b before it reads input t (an episode start);
    `mask[t, b] = False` leaves its state unchanged at t (padding).
    """

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)

    def build(self, input_shape):
        input_dim = int(input_shape[-1])
        self.kernel = self.add_weight(
            name="kernel", shape=(input_dim, 4 * self.units), initializer="glorot_uniform"
        )
        self.recurrent_kernel = self.add_weight(
            name="recurrent_kernel", shape=(self.units, 4 * self.units), initializer="orthogonal"
        )
        self.bias = self.add_weight(
            name="bias", shape=(4 * self.units,), initializer=_forget_bias_one
        )
        self.built = True

    def _ensure_built(self, inputs: tf.Tensor) -> None:
        if not self.built:
            self.build(inputs.shape)

    def initial_state(self, batch_size) -> LSTMState:
        zeros = tf.zeros([batch_size, self.units], dtype=tf.float32)
        return LSTMState(h=zeros, c=zeros)

    def _cell(self, projected_input: tf.Tensor, state: LSTMState) -> LSTMState:
        z = projected_input + tf.matmul(state.h, self.recurrent_kernel)
        i, f, g, o = tf.split(z, 4, axis=-1)
        c = tf.sigmoid(f) * state.c + tf.sigmoid(i) * tf.tanh(g)
        h = tf.sigmoid(o) * tf.tanh(c)
        return LSTMState(h=h, c=c)

    @staticmethod
    def _reset(state: LSTMState, reset: tf.Tensor) -> LSTMState:
        keep = tf.cast(tf.logical_not(reset), tf.float32)[:, tf.newaxis]
        return LSTMState(h=state.h * keep, c=state.c * keep)

    def step(
        self, inputs: tf.Tensor, state: LSTMState, reset: Optional[tf.Tensor] = None
    ):
        """One step. inputs float32 `[B, F]`, reset bool `[B]` -> (output `[B, U]`, state)."""
        self._ensure_built(inputs)
        if reset is not None:
            state = self._reset(state, reset)
        projected = tf.matmul(inputs, self.kernel) + self.bias
        new_state = self._cell(projected, state)
        return new_state.h, new_state

    def unroll(
        self,
        inputs: tf.Tensor,
        state: LSTMState,
        reset: Optional[tf.Tensor] = None,
        mask: Optional[tf.Tensor] = None,
    ):
        """Runs over time.

        Args:
          inputs: float32 `[T, B, F]`.
          state: `LSTMState` of `[B, U]` tensors, the state before step 0.
          reset: optional bool `[T, B]`; True zeroes the state before step t.
          mask: optional bool `[T, B]`; False keeps the state unchanged at step t.

        Returns:
          (outputs float32 `[T, B, U]`, final `LSTMState`).
        """
        self._ensure_built(inputs)
        num_steps = tf.shape(inputs)[0]
        batch = tf.shape(inputs)[1]
        flat = tf.reshape(inputs, [-1, inputs.shape[-1]])
        projected = tf.matmul(flat, self.kernel) + self.bias
        projected = tf.reshape(projected, [num_steps, batch, 4 * self.units])
        if reset is None:
            reset = tf.zeros([num_steps, batch], dtype=tf.bool)
        if mask is None:
            mask = tf.ones([num_steps, batch], dtype=tf.bool)

        def body(carry, elems):
            prev_state = LSTMState(*carry)
            x_t, reset_t, mask_t = elems
            prev_state = self._reset(prev_state, reset_t)
            new_state = self._cell(x_t, prev_state)
            keep = mask_t[:, tf.newaxis]
            new_state = LSTMState(
                h=tf.where(keep, new_state.h, prev_state.h),
                c=tf.where(keep, new_state.c, prev_state.c),
            )
            return tuple(new_state)

        states = tf.scan(body, (projected, reset, mask), initializer=tuple(state))
        outputs = states[0]
        final_state = LSTMState(h=states[0][-1], c=states[1][-1])
        return outputs, final_state
