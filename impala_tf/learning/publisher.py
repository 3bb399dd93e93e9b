"""Publishing the learner's parameters to its actors off the update's path.

Reading every variable back to the host (`v.numpy()`) after an update waits for the update to
finish on the accelerator, and encoding the parameters message costs the learner's thread a
copy of every weight: both stall an accelerator's pipeline once per update. Here the learner
thread only takes a device-side snapshot (one compiled call copying every variable, which
queues behind the update without waiting for it) and hands it to a thread that copies it to
the host, encodes it and publishes it (`rpc.parameter_store.ParameterStore`). A snapshot the thread has
not taken yet is replaced by a newer one: actors want the newest parameters, not each one.

The cost is policy lag: parameters reach the actors some updates after the step they were
taken at; `pop_publish_lag` reports the mean of those updates since it was last called (the
metrics' `publish_lag_mean`).
"""

import threading
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from impala_tf.rpc.parameter_store import ParameterStore


def parameter_fields(agent) -> Dict[str, np.ndarray]:
    """The agent's variables by path, in the agent's fixed order (actors load them by
    position, checking shapes)."""
    return {v.path: np.asarray(v.numpy()) for v in agent.variables}


class ParameterPublisher:
    """Publishes `agent`'s parameters into `store` (module docstring).

    Args:
      agent: the learner's agent.
      store: where actors read the newest parameters from.
      learner_step: the learner step now (to measure the publication's lag).
      asynchronous: publish from a thread (True) or in the caller, waiting (False: the old way,
        kept for comparison in `impala-benchmark --stages=loop`).
    """

    def __init__(self, agent, store: ParameterStore, learner_step: Callable[[], int],
                 asynchronous: bool = True):
        self.agent, self.store = agent, store
        self.asynchronous = bool(asynchronous)
        self._learner_step = learner_step
        variables = list(agent.variables)
        self._paths = [v.path for v in variables]
        self._snapshot = tf.function(lambda: [tf.identity(v) for v in variables])
        self._cond = threading.Condition()
        self._pending: Optional[Tuple[int, List[tf.Tensor]]] = None
        self._busy = False
        self._closed = False
        self._error: Optional[BaseException] = None
        self.published = 0
        self.superseded = 0  # snapshots replaced before the thread took them
        self._lags: List[int] = []
        self._thread: Optional[threading.Thread] = None
        if self.asynchronous:
            self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
            self._thread.start()

    def publish_now(self, step: int) -> None:
        """Publishes the parameters as they are, in this thread (start-up, restore)."""
        self.store.publish(step, parameter_fields(self.agent))
        self.published += 1

    def publish(self, step: int) -> None:
        """Publishes the parameters after learner step `step`: asynchronously, a snapshot
        handed to the thread; else as `publish_now`."""
        self._raise_if_failed()
        if not self.asynchronous:
            self.publish_now(step)
            return
        values = self._snapshot()
        with self._cond:
            if self._pending is not None:
                self.superseded += 1
            self._pending = (int(step), values)
            self._cond.notify_all()

    def flush(self, timeout: float = 60.0) -> None:
        """Waits until the last snapshot handed over is published (end of a run)."""
        with self._cond:
            if not self._cond.wait_for(lambda: (self._pending is None and not self._busy)
                                       or self._error is not None or self._closed, timeout):
                raise TimeoutError(f"the parameter publisher did not publish within {timeout} s")
        self._raise_if_failed()

    def pop_publish_lag(self) -> Optional[float]:
        """The mean of updates made between a snapshot and its publication, over the
        publications since the last call (None: none)."""
        with self._cond:
            lags, self._lags = self._lags, []
        return float(np.mean(lags)) if lags else None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise RuntimeError("publishing parameters to the actors failed") from self._error

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or self._closed)
                if self._closed:
                    return
                (step, values), self._pending = self._pending, None
                self._busy = True
            try:
                fields = {path: value.numpy() for path, value in zip(self._paths, values)}
                self.store.publish(step, fields)
                lag = self._learner_step() - step
            except BaseException as error:  # noqa: BLE001 (raised in the learner's thread)
                with self._cond:
                    self._error, self._busy = error, False
                    self._cond.notify_all()
                return
            with self._cond:
                self.published += 1
                self._lags.append(max(0, lag))
                self._busy = False
                self._cond.notify_all()
