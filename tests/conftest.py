"""Test set-up: Keras on TensorFlow, quiet logs, seeded initialisers, two logical CPUs."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# Property-based tests: a few hundred examples in the suite; `experiments/fuzz_wire.py` runs
# the "fuzz" profile with HYPOTHESIS_EXAMPLES examples per test.
settings.register_profile("fuzz", max_examples=int(os.environ.get("HYPOTHESIS_EXAMPLES", "20000")),
                          deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(autouse=True)
def _seed():
    import keras  # noqa: PLC0415
    keras.utils.set_random_seed(0)  # Python, NumPy, TF and Keras initialisers
    yield


# TensorFlow imported as the commands import it: its start-up notices kept out of the output.
from impala_tf import quiet  # noqa: E402

quiet.import_tensorflow()

# Two logical CPU devices, so that MirroredStrategy can be tested on one CPU. This must run
# before TensorFlow starts its runtime, hence here, at import time.
from impala_tf.distribute import configure_devices  # noqa: E402

configure_devices(2)


def pytest_collection_modifyitems(items):
    from mutation_order import fastest_first  # noqa: PLC0415
    fastest_first(items)
