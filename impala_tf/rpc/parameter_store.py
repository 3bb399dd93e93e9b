"""The newest parameters as actors fetch them: encoded once per publication, served to every
caller whose copy is older (`/impala.Learner/GetParameters`)."""

import secrets
import threading
from typing import Mapping

import numpy as np

from impala_tf.rpc import codec


class ParameterStore:
    """The newest parameters, encoded once per publication.

    `incarnation` is a random positive int63 drawn per store (per learner process); it rides in
    each message's meta with the version, so an actor that held parameters from a learner that
    has since been restarted reloads even if their version is higher than the new learner's."""

    def __init__(self):
        self._lock = threading.Lock()
        self._version = -1
        self._payload = b""
        self.incarnation = secrets.randbits(62) + 1

    @property
    def version(self) -> int:
        return self._version

    @property
    def payload_bytes(self) -> int:
        """The size of the newest parameters message."""
        return len(self._payload)

    def publish(self, version: int, fields: Mapping[str, np.ndarray]) -> None:
        payload = codec.encode(codec.PARAMS_MAGIC, fields,
                               {"version": int(version), "incarnation": self.incarnation})
        with self._lock:
            self._version, self._payload = int(version), payload

    def newer_than(self, version: int, incarnation: int) -> bytes:
        """The payload if it is newer than what a caller holding (version, incarnation) has."""
        with self._lock:
            newer = self._version > version or (incarnation != self.incarnation
                                                 and self._version >= 0)
            return self._payload if newer else b""
