"""impala_tf: IMPALA (Espeholt et al., 2018) in TensorFlow 2 / Keras 3.

Importing the package pins Keras 3 to the TensorFlow backend, so that Keras
layers, `tf.function`, `tf.distribute` and XLA all see the same tensors, and imports
TensorFlow with its start-up notices kept off the terminal (`impala_tf.quiet`; `--verbose`
or IMPALA_TF_VERBOSE=1 shows them).
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from impala_tf import quiet  # noqa: E402

quiet.import_tensorflow()

__version__ = "0.1.0"
