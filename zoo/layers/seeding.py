"""Initializers and dropout that every family builds its layers with, seeded so that a resumed run
draws the same masks as an uninterrupted one on every backend.

Keras's torch backend ignores an unseeded SeedGenerator and draws from torch's global RNG, which a
checkpoint cannot restore; seeded, a Dropout's generator state is a model variable, saved and
restored with the rest. Seeds come from Python's RNG, which keras.utils.set_random_seed seeds.
"""

import random

import keras
from keras import ops


def normal(stddev):
    """GPT-2's and BERT's weight initializer: a normal of this standard deviation."""
    return keras.initializers.RandomNormal(stddev=stddev)


def seeded_dropout(rate, policy):
    """A new Dropout layer with an explicit seed."""
    return keras.layers.Dropout(rate, seed=random.randint(0, 2**31 - 1), dtype=policy)


def seed_dropout(dropout):
    """Gives an existing unseeded Dropout layer (one a keras-hub layer built) a fresh seed, in place."""
    if dropout.rate == 0:
        return  # a rate-0 Dropout has no generator and draws nothing
    seed = random.randint(0, 2**31 - 1)
    generator = dropout.seed_generator
    dropout.seed = generator._initial_seed = seed  # torch's backend checks `_initial_seed is None`
    generator.state.assign(ops.convert_to_tensor([seed, 0], dtype=generator.state.dtype))


def seed_dropouts(layer):
    """Marks every unseeded Dropout inside a built keras-hub layer as seeded by the seed its
    generator's state already holds (drawn from Keras's seeded global generator), so that torch uses
    the generator. The layers are locked once built, so the generator cannot be replaced; this
    private field is the only switch."""
    for sublayer in layer._flatten_layers():
        if isinstance(sublayer, keras.layers.Dropout) and sublayer.rate > 0 and sublayer.seed is None:
            generator = sublayer.seed_generator
            sublayer.seed = generator._initial_seed = int(ops.convert_to_numpy(generator.state)[0])
