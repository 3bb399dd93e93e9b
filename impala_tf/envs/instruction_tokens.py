"""DMLab instructions as token ids, without TensorFlow (the environments need them in
actor processes that run no model; the encoder is `networks.instruction`)."""

import zlib

import numpy as np

DEFAULT_NUM_BUCKETS = 1000
DEFAULT_MAX_INSTRUCTION_LENGTH = 16


def tokenize_instruction(
    text: str,
    max_length: int = DEFAULT_MAX_INSTRUCTION_LENGTH,
    num_buckets: int = DEFAULT_NUM_BUCKETS,
) -> np.ndarray:
    """Whitespace-split words -> int32 `[max_length]` ids in `[1, num_buckets]`, 0-padded
    (CRC-32 hashes, stable across processes and hosts). Words beyond `max_length` are
    dropped.
    """
    ids = np.zeros([max_length], dtype=np.int32)
    for i, word in enumerate(text.split()[:max_length]):
        ids[i] = zlib.crc32(word.encode("utf-8")) % num_buckets + 1
    return ids
