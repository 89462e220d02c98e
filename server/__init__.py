"""gRPC serving for zoo models: `zoo serve` runs `server.main`, `server.client` calls it."""
