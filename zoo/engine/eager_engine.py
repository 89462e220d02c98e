"""The reference engine: a model's cache protocol run op by op on any backend (zoo.engine.interface
says what that protocol is): nothing compiled, nothing padded. The engine of a model that has no
faster one on the active backend (zoo.engine.backends), and what the tests compare the fast
engines with."""

import keras
import numpy as np

from zoo.engine.interface import DecodeEngine


class EagerEngine(DecodeEngine):
    """The reference: the model's `call_with_cache` run op by op, no padding, nothing compiled."""

    compiled = False
    prefills_together = False  # the reference runs each prompt alone

    def new_cache(self, slots):
        return self.model.init_cache(slots)

    def prefill(self, ids):
        self.bucket(len(ids))  # checks the length; nothing is padded
        logits, cache = self.model.prefill_with_cache(np.asarray([ids], "int32"), len(ids))
        return keras.ops.convert_to_numpy(logits)[0], cache

    def insert(self, cache, slot, row_cache):
        return keras.tree.map_structure(
            lambda array, row: keras.ops.slice_update(array, (slot,) + (0,) * (len(array.shape) - 1), row),
            cache, row_cache)

    def reorder(self, cache, rows):
        rows = np.asarray(rows, "int32")

        def take(array):
            return keras.ops.slice_update(array, (0,) * len(array.shape), keras.ops.take(array, rows, axis=0))

        return keras.tree.map_structure(take, cache)

    def _decode(self, tokens, cache, positions):
        logits, cache = self.model.call_with_cache(tokens[:, None], cache, positions, logits_at=0)
        return keras.ops.convert_to_numpy(logits), cache

    def _verify(self, tokens, cache, position):
        logits, cache = self.model.call_with_cache(tokens[None], cache, position)
        return keras.ops.convert_to_numpy(logits)[0], cache
