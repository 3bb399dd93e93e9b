"""gRPC transport: the tensor codec, the learner's service and the actors' client."""
