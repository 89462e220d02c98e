"""LoRA fine-tuning (`--lora-rank R [--lora-alpha A]`): low-rank adapters on the attention
projections, every other weight frozen, and the adapters merged back for export.

Targets: every Dense or EinsumDense layer inside an attention layer (a layer whose class, or a base
class, is named `...Attention`): GPT's fused `qkv` and `out`, keras-hub's query, key, value and
attention_output (BERT's encoder, seq2seq's self- and cross-attention). Found by walking the model's
layers, so any family's model gets them. Embeddings, norms, MLPs and the attention projections'
own kernels and biases are frozen; only the adapters (Keras's `enable_lora`: kernel + alpha/rank * A @ B,
B starting at zero) and the layers named as a new `head` (BERT's classifier) train.

A run's config.json `lora` entry, {"rank", "alpha", "head", "targets"}, is what `enable` reads:
targets are recorded (layer paths inside the model) when a run starts, so that a resumed run or an
export adapts exactly the layers it trained. Checkpoints hold base kernels and adapters as separate
arrays; `merged` folds them into an ordinary model for a bundle.
"""

from zoo.errors import ZooError


def _layers(layer):
    """Every layer inside `layer`, depth first in the order they were created."""
    for sublayer in layer._layers:
        yield sublayer
        yield from _layers(sublayer)


def _inside(model, item):
    """`item`'s path inside `model` ("block_0/attn/qkv"): a model's own name varies ("gpt_1")."""
    return item.path.split("/", 1)[1] if item.path.startswith(model.name + "/") else item.path


def _is_attention(layer):
    return any(cls.__name__.endswith("Attention") for cls in type(layer).__mro__)


def default_targets(model):
    """The paths of the Dense and EinsumDense layers inside the model's attention layers."""
    found = {}
    for layer in _layers(model):
        if _is_attention(layer):
            for sublayer in _layers(layer):
                if hasattr(sublayer, "enable_lora") and sublayer.weights:
                    found.setdefault(_inside(model, sublayer), None)
    return list(found)


def enable(model, settings):
    """Adds rank-`settings["rank"]` adapters to the built `model`'s target layers (`settings["targets"]`,
    or `default_targets` when the run starts) and freezes every weight but theirs and the `head`
    layers'. Returns the targets."""
    layers = {_inside(model, layer): layer for layer in _layers(model) if layer.weights}
    targets = settings.get("targets") or default_targets(model)
    missing = [path for path in [*targets, *settings.get("head", [])] if path not in layers]
    if missing or not targets:
        raise ZooError(f"LoRA: the model has {'no layer ' + missing[0] if missing else 'no attention projections'}")
    head = {id(v) for path in settings.get("head", []) for v in layers[path].trainable_weights}
    for variable in model.trainable_weights:
        if id(variable) not in head:
            variable.trainable = False
    for path in targets:
        layers[path].enable_lora(settings["rank"], lora_alpha=settings["alpha"])
    return targets


def merged(model, plain):
    """`plain`, the same model built without adapters, given `model`'s weights with each adapted
    kernel replaced by Keras's merged one (kernel + alpha/rank * A @ B): an ordinary model, as fast
    as one never adapted, that a bundle stores and loads like any other."""
    adapted = [layer for layer in _layers(model) if getattr(layer, "lora_enabled", False)]
    kernels = {id(next(w for w in layer.weights if w.name == "kernel")): layer.kernel for layer in adapted}
    adapters = {id(v) for layer in adapted for v in (layer.lora_kernel_a, layer.lora_kernel_b)}
    for target, source in zip(plain.variables, [v for v in model.variables if id(v) not in adapters], strict=True):
        target.assign(kernels.get(id(source), source.value))
    return plain
