"""The protocol between actors and the learner, as both ends see it: the gRPC methods, the
call metadata an actor names itself with, the parameter request, and the channel options.

The learner serves `impala.Learner` (`rpc.service`, run by `rpc.server`); actors call it (`rpc.client`,
`acting.env_actor`). Messages are the codec's (`rpc.codec`): unrolls (`UNROLL_MAGIC`,
`rpc.frame_packing` when stacked frames are packed), parameters, and central inference's
hello, steps and actions (`rpc.step_messages`).

  StreamUnrolls  client stream of unrolls -> one empty reply when the actor closes it
  GetParameters  one request `PARAMETERS_REQUEST` (version, incarnation the caller holds)
                 -> the newest parameters, or an empty reply when the caller's are current
  Act            bidirectional: a hello, then one step of K environments per message
                 -> the settings, then K actions per step (central inference)
"""

import struct
from typing import List, Optional, Tuple

SERVICE = "impala.Learner"
STREAM_UNROLLS = f"/{SERVICE}/StreamUnrolls"
GET_PARAMETERS = f"/{SERVICE}/GetParameters"
ACT = f"/{SERVICE}/Act"
PARAMETERS_REQUEST = struct.Struct("<qq")  # (version, incarnation) the caller holds

# The call metadata in which an actor names its id (the learner holds calls per id).
ACTOR_ID_METADATA = "impala-actor-id"


def grpc_options(max_message_bytes: int, stream_window_bytes: int = 1 << 20,
                 max_send_bytes: Optional[int] = None) -> List[Tuple[str, int]]:
    """Channel and server options of both ends: message size limits (received:
    `max_message_bytes`; sent: `max_send_bytes`, by default the same), and HTTP/2 flow
    control that does not grow its window by bandwidth-delay probing: a stream then buffers
    at most `stream_window_bytes` that its receiver has not asked for, so a full learner
    queue stops the actors instead of filling memory."""
    return [
        ("grpc.max_receive_message_length", int(max_message_bytes)),
        ("grpc.max_send_message_length", int(max_send_bytes or max_message_bytes)),
        ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", int(stream_window_bytes)),
    ]
