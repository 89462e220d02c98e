"""Family-neutral inference: the decode-engine interface and its backends, sampling, and the
per-request generation loop. A family's runtime (its generator or classifier) builds on these."""

from zoo.engine.backends import engine_for, new_engine
from zoo.engine.eager_engine import EagerEngine
from zoo.engine.generation import FINISH_END, FINISH_LENGTH, FINISH_STOP, Continuation, Result, Step, run_stream
from zoo.engine.interface import DecodeEngine, prompt_buckets
from zoo.engine.sampling import SamplingConfig

__all__ = ["Continuation", "DecodeEngine", "EagerEngine", "FINISH_END", "FINISH_LENGTH", "FINISH_STOP", "Result",
           "SamplingConfig", "Step", "engine_for", "new_engine", "prompt_buckets", "run_stream"]
