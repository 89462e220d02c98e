"""zoo: GPT, BERT and seq2seq transformers in Keras 3, trained on any backend and served over gRPC.

Importing `zoo` does not import keras, so that `zoo.backend.select_backend` can still choose the
backend; the submodules that need keras import it themselves.
"""

__version__ = "0.1.0"
