"""impala_tf: IMPALA (Espeholt et al., 2018) in TensorFlow 2 / Keras 3.

Importing the package pins Keras 3 to the TensorFlow backend, so that Keras
layers, `tf.function`, `tf.distribute` and XLA all see the same tensors.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
