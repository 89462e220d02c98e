"""Inference: prefill + cached decoding and sampling, shared by `zoo generate` and the server."""

from zoo.engine.generation import FINISH_END, FINISH_LENGTH, FINISH_STOP, Generator, Result, SamplingConfig, Step

__all__ = ["FINISH_END", "FINISH_LENGTH", "FINISH_STOP", "Generator", "Result", "SamplingConfig", "Step"]
