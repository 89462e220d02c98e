"""Inference: prefill + cached decoding and sampling, shared by `zoo generate` and the server."""

from zoo.engine.compiled import DecodeEngine, EagerEngine, engine_for, new_engine, prompt_buckets
from zoo.engine.generation import FINISH_END, FINISH_LENGTH, FINISH_STOP, Generator, Result, SamplingConfig, Step
from zoo.engine.seq2seq import BeamResult, Seq2SeqGenerator, evaluate_translations

__all__ = ["BeamResult", "DecodeEngine", "EagerEngine", "FINISH_END", "FINISH_LENGTH", "FINISH_STOP", "Generator",
           "Result", "SamplingConfig", "Seq2SeqGenerator", "Step", "engine_for", "evaluate_translations", "new_engine",
           "prompt_buckets"]
