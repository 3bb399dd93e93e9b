"""The DMLab language-level instruction encoder (paper Fig. 3, right).

Words are hashed into `num_buckets` buckets *outside* the model (strings cannot go through
XLA or the wire codec cheaply): `tokenize_instruction` (in `envs.instruction_tokens`, free of
TensorFlow for the environments) turns the `INSTR` text into int32 token ids in
`[1, num_buckets]`, 0 being padding. Inside the model the ids are embedded
(size 20) and read by an LSTM (64 units); the encoding is its output after the last word.

The hash is CRC-32 (stable across processes and hosts); the reference code used TF's
FarmHash `string_to_hash_bucket_fast`, so token ids differ from its checkpoints.
"""

import keras
import tensorflow as tf

from impala_tf.envs.instruction_tokens import (
    DEFAULT_MAX_INSTRUCTION_LENGTH, DEFAULT_NUM_BUCKETS, tokenize_instruction)
from impala_tf.gin_utils import keras_configurable
from impala_tf.networks.lstm import ResettableLSTM

__all__ = ["DEFAULT_MAX_INSTRUCTION_LENGTH", "DEFAULT_NUM_BUCKETS", "InstructionEncoder",
           "tokenize_instruction"]


@keras_configurable
class InstructionEncoder(keras.layers.Layer):
    """int32 tokens `[N, L]` (0 = padding) -> float32 `[N, lstm_size]`."""

    def __init__(
        self,
        num_buckets: int = DEFAULT_NUM_BUCKETS,
        embedding_size: int = 20,
        lstm_size: int = 64,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_buckets = num_buckets
        self.embedding = keras.layers.Embedding(num_buckets + 1, embedding_size)
        self.lstm = ResettableLSTM(lstm_size)

    def call(self, tokens):
        tokens = tf.cast(tokens, tf.int32)
        mask = tokens > 0
        embedded = self.embedding(tokens)  # [N, L, E]
        time_major = tf.transpose(embedded, [1, 0, 2])
        state = self.lstm.initial_state(tf.shape(tokens)[0])
        _, final_state = self.lstm.unroll(time_major, state, mask=tf.transpose(mask))
        return final_state.h
