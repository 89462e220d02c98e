"""Text generation from an LSTM language model, its recurrent state as the cache.

The model has the cache protocol zoo.engine's decode engines run (see model.py): the cache is one
(h, c) pair per layer and slot. The prompt runs once through the LSTM stack (`prefill_with_cache`:
the LSTM layers over the padded prompt, the padding masked so the state is the one after its last
real token); then each token is one step of every layer's cell from the state the step before left
(`call_with_cache`). On JAX and TensorFlow the engine compiles both (`jax.jit`,
`tf.function(jit_compile=True)`); on torch they run op by op (`EagerEngine`). Sampling, stop
strings, the end token and the budget are zoo.engine's, exactly as a GPT's, and the server batches
LSTM requests continuously as it does GPT ones, a slot of the state per request.
"""

from zoo.engine.generation import LanguageModelGenerator


class Generator(LanguageModelGenerator):
    """Generates text from an LSTM language model and its tokenizer (`engine`: see LanguageModelGenerator)."""
