"""Kernel initialisation of the agent's convolutions and dense layers, one scheme for the
whole network, picked by a gin binding (`initializers.scheme = 'orthogonal'`).

Schemes:
  `glorot` (default): Keras' glorot_uniform for every kernel.
  `sonnet`: the paper's code (scalable_agent builds its layers with Sonnet 1, whose default
    is a truncated normal with stddev 1/sqrt(fan_in), cut at two stddevs).
  `orthogonal`: OpenAI Baselines' Atari actor-critics and the PyTorch A2C/PPO ports:
    orthogonal kernels with gain sqrt(2) ahead of a ReLU, 0.01 for the policy logits (a
    near-uniform first policy) and 1 for the baseline.

Biases start at zero in every scheme. The LSTMs keep their own initialisation (glorot
input kernel, orthogonal recurrent kernel, forget-gate bias 1) and the instruction embedding
Keras' uniform one.
"""

import math

import gin
import keras

SCHEMES = ("glorot", "sonnet", "orthogonal")
ROLES = ("relu", "policy", "baseline")
# Keras' truncated normal divides its stddev by this (the stddev of a unit normal cut at two
# stddevs); Sonnet 1 does not, so scaling by its square gives Sonnet's 1/sqrt(fan_in).
_TRUNCATED_STDDEV = 0.87962566103423978
_ORTHOGONAL_GAINS = {"relu": math.sqrt(2.0), "policy": 0.01, "baseline": 1.0}


@gin.configurable("initializers", allowlist=["scheme"])
def kernel_initializer(role: str, scheme: str = "glorot") -> keras.initializers.Initializer:
    """The initialiser for a kernel whose layer plays `role`: `relu` (a ReLU follows it),
    `policy` (the policy logits) or `baseline` (the value head)."""
    if role not in ROLES:
        raise ValueError(f"kernel_initializer: unknown role {role!r}; expected one of {ROLES}.")
    if scheme == "glorot":
        return keras.initializers.GlorotUniform()
    if scheme == "sonnet":
        return keras.initializers.VarianceScaling(
            scale=_TRUNCATED_STDDEV ** 2, mode="fan_in", distribution="truncated_normal")
    if scheme == "orthogonal":
        return keras.initializers.Orthogonal(gain=_ORTHOGONAL_GAINS[role])
    raise ValueError(f"initializers.scheme = {scheme!r} is not a scheme; expected one of "
                     f"{SCHEMES}.")
