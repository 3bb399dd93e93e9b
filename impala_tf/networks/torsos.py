"""The paper's visual torsos (Fig. 3): shallow and deep (ResNet); the DQN ("Nature") torso
that other IMPALA implementations (e.g. TorchBeast's MonoBeast) use for Atari; and a small
MLP torso for tiny test games (Catch).

All take uint8 frames `[N, H, W, C]` and scale them to [0, 1] inside the model (`scale_frame`;
`frames.centre = True` also subtracts each frame's mean over the screen), and return float32
`[N, fc_size]` features after a ReLU.
"""

from typing import Sequence, Tuple

import gin
import keras
import tensorflow as tf

from impala_tf.gin_utils import keras_configurable
from impala_tf.networks.initializers import kernel_initializer


@gin.configurable("frames", allowlist=["centre"])
def scale_frame(frame: tf.Tensor, centre: bool = False) -> tf.Tensor:
    """uint8 `[N, H, W, C]` -> float32 in [0, 1]; with `centre`, minus each of the C stacked
    frames' own mean over H x W (in [-1, 1]), so a flat background reads 0 whatever its grey
    and a first-layer filter's output depends on what moves rather than on the sum of its
    weights. Off by default (the paper scales only)."""
    x = tf.cast(frame, tf.float32) / 255.0
    if centre:
        x = x - tf.reduce_mean(x, axis=[-3, -2], keepdims=True)
    return x


def _conv(filters: int, kernel_size: int, **kwargs) -> keras.layers.Conv2D:
    """A convolution whose output goes through a ReLU (here or in the next layer)."""
    return keras.layers.Conv2D(filters, kernel_size, kernel_initializer=kernel_initializer("relu"),
                               **kwargs)


def _dense(units: int, **kwargs) -> keras.layers.Dense:
    """A dense layer with a ReLU."""
    return keras.layers.Dense(units, kernel_initializer=kernel_initializer("relu"), **kwargs)


@keras_configurable
class ShallowTorso(keras.layers.Layer):
    """conv 16 8x8 stride 4, conv 32 4x4 stride 2 (valid padding, ReLU), fully connected 256."""

    def __init__(self, fc_size: int = 256, **kwargs):
        super().__init__(**kwargs)
        self.conv1 = _conv(16, 8, strides=4, padding="valid", activation="relu")
        self.conv2 = _conv(32, 4, strides=2, padding="valid", activation="relu")
        self.flatten = keras.layers.Flatten()
        self.fc = _dense(fc_size, activation="relu")

    def call(self, frame):
        x = self.conv2(self.conv1(scale_frame(frame)))
        return self.fc(self.flatten(x))


@keras_configurable
class NatureTorso(keras.layers.Layer):
    """The DQN network of Mnih et al. (2015): conv 32 8x8 stride 4, conv 64 4x4 stride 2,
    conv 64 3x3 stride 1 (valid padding, ReLU), fully connected 512."""

    def __init__(self, fc_size: int = 512, **kwargs):
        super().__init__(**kwargs)
        self.conv1 = _conv(32, 8, strides=4, padding="valid", activation="relu")
        self.conv2 = _conv(64, 4, strides=2, padding="valid", activation="relu")
        self.conv3 = _conv(64, 3, strides=1, padding="valid", activation="relu")
        self.flatten = keras.layers.Flatten()
        self.fc = _dense(fc_size, activation="relu")

    def call(self, frame):
        x = self.conv3(self.conv2(self.conv1(scale_frame(frame))))
        return self.fc(self.flatten(x))


class ResidualBlock(keras.layers.Layer):
    """x + conv(relu(conv(relu(x)))), 3x3 same-padded convolutions."""

    def __init__(self, channels: int, **kwargs):
        super().__init__(**kwargs)
        self.conv1 = _conv(channels, 3, padding="same")
        self.conv2 = _conv(channels, 3, padding="same")

    def call(self, x):
        y = self.conv1(tf.nn.relu(x))
        y = self.conv2(tf.nn.relu(y))
        return x + y


@keras_configurable
class DeepTorso(keras.layers.Layer):
    """Sections of (conv 3x3, max-pool 3x3 stride 2, residual blocks), then ReLU and fc 256.

    The paper's sections are `((16, 2), (32, 2), (32, 2))`: (channels, residual blocks).
    Layers are attributes (not list items) so that `tf.train.Checkpoint` tracks them.
    """

    def __init__(
        self,
        sections: Sequence[Tuple[int, int]] = ((16, 2), (32, 2), (32, 2)),
        fc_size: int = 256,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.layer_names = []
        for i, (channels, num_blocks) in enumerate(sections):
            stage = {
                f"section{i}_conv": _conv(channels, 3, padding="same"),
                f"section{i}_pool": keras.layers.MaxPooling2D(
                    pool_size=3, strides=2, padding="same"),
            }
            stage.update({f"section{i}_block{j}": ResidualBlock(channels)
                          for j in range(num_blocks)})
            for name, layer in stage.items():
                setattr(self, name, layer)
                self.layer_names.append(name)
        self.flatten = keras.layers.Flatten()
        self.fc = _dense(fc_size, activation="relu")

    def call(self, frame):
        x = scale_frame(frame)
        for name in self.layer_names:
            x = getattr(self, name)(x)
        x = tf.nn.relu(x)
        return self.fc(self.flatten(x))


@keras_configurable
class MLPTorso(keras.layers.Layer):
    """Flattened frame -> fully connected ReLU layers; for tiny frames such as Catch's."""

    def __init__(self, hidden_sizes: Sequence[int] = (64,), **kwargs):
        super().__init__(**kwargs)
        self.flatten = keras.layers.Flatten()
        self.num_hidden = len(hidden_sizes)
        for i, size in enumerate(hidden_sizes):  # attributes, so checkpoints track them
            setattr(self, f"hidden{i}", _dense(size, activation="relu"))

    def call(self, frame):
        x = self.flatten(scale_frame(frame))
        for i in range(self.num_hidden):
            x = getattr(self, f"hidden{i}")(x)
        return x


TORSOS = {"shallow": ShallowTorso, "deep": DeepTorso, "nature": NatureTorso, "mlp": MLPTorso}


def make_torso(name: str) -> keras.layers.Layer:
    """Builds the torso registered under `name` (`shallow`, `deep`, `nature` or `mlp`)."""
    try:
        return TORSOS[name]()
    except KeyError:
        raise ValueError(f"Unknown torso {name!r}; expected one of {sorted(TORSOS)}.") from None
