"""Request caps and connection settings of `zoo serve`, each a flag: the checks here refuse a
request beyond a cap with a message naming the field and the flag that sets it.

Message size: zoo checks every request's size itself (server/gate.py), so that the refusal names
`--max-request-bytes`; gRPC's own limit is set to twice that, so that a larger message is dropped
by gRPC before it is buffered further (its RESOURCE_EXHAUSTED names no flag: gRPC writes it).
Keepalive follows gRPC's guide (grpc.io/docs/guides/keepalive): the server pings idle connections
to find dead peers, and closes connections of clients that ping more often than allowed
(GOAWAY "too_many_pings" after 2 strikes).
"""

import dataclasses

import grpc

from server.status import INVALID, Abort

MiB = 1 << 20


@dataclasses.dataclass(frozen=True)
class Limits:
    max_request_bytes: int = 4 * MiB
    max_texts: int = 256  # texts per Classify/Embed request
    max_text_bytes: int = 64 * 1024  # one prompt, or one text (or pair) to classify or embed, UTF-8
    max_stop_sequences: int = 16
    max_stop_bytes: int = 256  # one stop sequence, UTF-8
    max_streams_per_connection: int = 100
    keepalive_seconds: float = 60.0
    keepalive_timeout_seconds: float = 20.0
    min_ping_interval_seconds: float = 10.0

    def grpc_options(self):
        """The gRPC server options (channel arguments) these settings map to."""
        return [
            ("grpc.max_receive_message_length", 2 * self.max_request_bytes),
            ("grpc.max_send_message_length", 64 * MiB),
            ("grpc.max_concurrent_streams", self.max_streams_per_connection),
            ("grpc.keepalive_time_ms", int(self.keepalive_seconds * 1000)),
            ("grpc.keepalive_timeout_ms", int(self.keepalive_timeout_seconds * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", int(self.min_ping_interval_seconds * 1000)),
            ("grpc.http2.max_ping_strikes", 2),
        ]

    # --- checks of request fields ------------------------------------------------------------------

    def check_request_size(self, size, method):
        if size > self.max_request_bytes:
            raise Abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"{method}: the request is {size} bytes; this server takes at most "
                              f"{self.max_request_bytes} (--max-request-bytes)")

    def check_text(self, field, text):
        size = len(text.encode("utf-8"))
        if size > self.max_text_bytes:
            raise Abort(INVALID, f"{field}: {size} bytes of UTF-8; at most {self.max_text_bytes} "
                                       "(--max-text-bytes)")

    def check_texts(self, texts, pairs):
        if len(texts) > self.max_texts:
            raise Abort(INVALID, f"texts: {len(texts)} given; at most {self.max_texts} per request (--max-texts)")
        for field, values in (("texts", texts), ("text_pairs", pairs)):
            for i, text in enumerate(values):
                self.check_text(f"{field}[{i}]", text)

    def check_stop_sequences(self, stops):
        if len(stops) > self.max_stop_sequences:
            raise Abort(INVALID, f"sampling.stop_sequences: {len(stops)} given; at most "
                                       f"{self.max_stop_sequences} (--max-stop-sequences)")
        for i, stop in enumerate(stops):
            size = len(stop.encode("utf-8"))
            if size > self.max_stop_bytes:
                raise Abort(INVALID, f"sampling.stop_sequences[{i}]: {size} bytes of UTF-8; at most "
                                           f"{self.max_stop_bytes} (--max-stop-bytes)")
