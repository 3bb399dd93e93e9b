"""impala_tf: IMPALA (Espeholt et al., 2018) in TensorFlow 2 / Keras 3.

Importing the package pins Keras 3 to the TensorFlow backend, so that Keras layers,
`tf.function`, `tf.distribute` and XLA all see the same tensors, and imports nothing else:
a module imports TensorFlow only if it uses it, so the environment actor
(`impala_tf.acting.env_actor`) and `impala_tf.plot` never do. The commands that run a model
import it through `impala_tf.quiet` first, which keeps its start-up notices off the terminal
(`--verbose` or IMPALA_TF_VERBOSE=1 shows them).
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
