"""A request refused with a gRPC status code and a message naming the field (or the flag) at fault."""

import grpc

INVALID = grpc.StatusCode.INVALID_ARGUMENT


class Abort(Exception):
    """A request refused with a status code and a message naming the field."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code, self.message = code, message
