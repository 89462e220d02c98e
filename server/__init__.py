"""gRPC serving for zoo models: `zoo serve` runs `server.app`, `server.client` calls it."""
