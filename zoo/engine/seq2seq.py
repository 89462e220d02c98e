"""Translation (any sequence-to-sequence task) with a Seq2Seq model: streaming greedy or sampled
decoding with the interface of `zoo.engine.Generator`, beam search, and BLEU / chrF evaluation.

The source is encoded once and each decoder layer's cross-attention keys/values are computed
once from it (`Seq2Seq.init_cache`); then the decoder runs one token per step from its
self-attention cache. The decoder starts from the end token, as BART starts from </s>. Tokens
are picked on the host by `zoo.engine.generation.sample`, as for the GPT and for the same reason
(keras-hub's samplers run their whole loop inside one compiled call: no streaming, no stop strings).
"""

import dataclasses
import weakref

import keras
import numpy as np

from zoo.engine.generation import FINISH_END, FINISH_LENGTH, Continuation, Result, _log_softmax, run_stream
from zoo.errors import ZooError


@dataclasses.dataclass
class BeamResult(Result):
    """The best hypothesis as a Result, its score, and every finished beam as (token_ids, score),
    best first. score = sum of log-probs / ((5 + length) / 6) ** length_penalty."""

    score: float
    beams: list


_FUNCTIONS = weakref.WeakKeyDictionary()  # model -> its (start, step) functions, shared by generators


def _for_backend(model, fn):
    """`fn`, a function of the model's variables and its arguments, as it best runs here.

    JAX in eager mode compiles every operation on its own for every new shape: seconds for each
    new batch size, and tens of milliseconds a decode step. So on JAX the whole function is one
    `jax.jit`, with the model's variables as arguments (current weights, nothing baked in), as
    zoo.engine.jax_engine does for the GPT. On TensorFlow it is one `tf.function` graph, which
    reads the variables at each call: a nano decode step took 2.7 ms against 54 ms eagerly.
    Not `jit_compile=True`: XLA traced keras-hub's cached decoder once but then took about 1.1 s a
    step. PyTorch runs it eagerly (torch.compile costs tens of seconds per shape; see torch_engine),
    and the decoder step is a plain-torch twin instead (zoo.engine.torch_seq2seq).
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        # Arguments as tensors: a Python or NumPy scalar (the step's position) would be traced as
        # a constant, one graph per position. One graph per batch size (1, beams, evaluation's).
        graph = tf.function(fn)
        return lambda *args: graph(*(tf.convert_to_tensor(a) for a in args))
    if backend != "jax":
        return fn
    import jax

    variables = list(model.variables)

    def stateless(state, *args):
        with keras.StatelessScope(state_mapping=list(zip(variables, state))):
            return fn(*args)

    jitted = jax.jit(stateless)
    return lambda *args: jitted([v.value for v in variables], *args)


def _functions(model):
    """(start, step) for `model`: start(source ids, mask) -> (self cache, cross cache), and step =
    decode_with_cache. Made once per model, so that every generator reuses what JAX compiled.
    They hold the model weakly: the table must not keep a model alive."""
    if model not in _FUNCTIONS:
        ref = weakref.ref(model)
        start = _for_backend(model, lambda ids, mask: ref().init_cache(ids.shape[0], ref().encode(ids, mask)))
        if keras.backend.backend() == "torch":
            from zoo.engine.torch_seq2seq import TorchSeq2SeqStep

            step = TorchSeq2SeqStep(model)
        else:
            step = _for_backend(model, lambda *args: ref().decode_with_cache(*args))
        _FUNCTIONS[model] = (start, step)
    return _FUNCTIONS[model]


class Seq2SeqGenerator:
    """Generates a target text from a source text, with a Seq2Seq model and its two tokenizers
    (the same object twice for a shared vocabulary)."""

    def __init__(self, model, source_tokenizer, target_tokenizer):
        self.model, self.source_tokenizer, self.tokenizer = model, source_tokenizer, target_tokenizer
        self.start_id = self.end_id = target_tokenizer.end_token_id
        self.max_length = model.max_target_length
        self._start, self._step = _functions(model)

    def prompt_ids(self, prompt, config):
        """The source's token ids with its end token, as in training; a source longer than the
        model's maximum is refused unless config.truncate_prompt (as Generator.prompt_ids)."""
        return self._source_ids(prompt, config.truncate_prompt)

    def _source_ids(self, prompt, truncate):
        # Truncation keeps the beginning: unlike a continuation, a translation needs the start.
        ids = self.source_tokenizer.encode(prompt)
        room = self.model.max_source_length - 1
        if len(ids) > room:
            if not truncate:
                raise ZooError(f"the source has {len(ids) + 1} tokens (with the end token), more than the model's "
                               f"maximum source length of {self.model.max_source_length} (shorten it or truncate it)")
            ids = ids[:room]
        return ids + [self.source_tokenizer.end_token_id]

    def _encode(self, rows):
        """Source rows of ids, padded to the maximum source length -> (padding mask, self cache,
        cross cache). One source shape for every call, so that shape-specialising backends
        (JAX, compiled steps) prepare it once."""
        width = self.model.max_source_length
        ids = np.asarray([r + [self.source_tokenizer.end_token_id] * (width - len(r)) for r in rows], dtype="int32")
        mask = np.arange(width)[None, :] < np.asarray([len(r) for r in rows])[:, None]
        cache, cross_cache = self._start(ids, mask)
        return mask, cache, cross_cache

    def _decode(self, tokens, cache, cross_cache, mask, position):
        """(logits of the last token as a NumPy array (batch, vocab), cache)."""
        logits, cache = self._step(np.asarray(tokens, dtype="int32"), cache, cross_cache, mask, np.int32(position))
        return keras.ops.convert_to_numpy(logits[:, -1]), cache

    def _budget(self, max_new_tokens):
        if max_new_tokens is not None and max_new_tokens > self.max_length:
            raise ZooError(f"max_new_tokens {max_new_tokens} exceeds the model's maximum target length "
                           f"{self.max_length}")
        return max_new_tokens or self.max_length

    def stream(self, prompt, config):
        """Yields a Step per generated token; returns (as StopIteration.value) the Result."""
        config.validate()
        budget = self._budget(config.max_new_tokens)
        ids = self.prompt_ids(prompt, config)
        continuation = Continuation(self.tokenizer, ids, config, budget)
        mask, cache, cross_cache = self._encode([ids])
        token, position = self.start_id, 0
        while True:
            logits, cache = self._decode([[token]], cache, cross_cache, mask, position)
            position += 1
            yield from continuation.feed(logits[0])
            if continuation.done:
                break
            token = continuation.last_token
        return (yield from continuation.close())

    def generate(self, prompt, config, on_text=None):
        """Runs `stream` to the end; calls on_text(chunk) for each piece of text. Returns the Result."""
        return run_stream(self.stream(prompt, config), on_text)

    def translate_batch(self, sources, max_new_tokens=None, batch_size=32):
        """Greedy translations of many sources, `batch_size` at a time in lockstep (for
        evaluation: one decoder call per step for the whole batch). Long sources are truncated."""
        budget, texts = self._budget(max_new_tokens), []
        for first in range(0, len(sources), batch_size):
            rows = [self._source_ids(s, truncate=True) for s in sources[first:first + batch_size]]
            count = len(rows)
            rows += [rows[-1]] * (batch_size - count)  # a short last batch is padded: one shape for all
            mask, cache, cross_cache = self._encode(rows)
            tokens = np.full((len(rows), 1), self.start_id, dtype="int32")
            generated, done = [[] for _ in rows], np.zeros(len(rows), dtype=bool)
            for position in range(budget):
                logits, cache = self._decode(tokens, cache, cross_cache, mask, position)
                tokens = np.argmax(logits, axis=-1).astype("int32")[:, None]
                done |= tokens[:, 0] == self.end_id
                if done.all():
                    break
                for row in np.flatnonzero(~done):
                    generated[row].append(int(tokens[row, 0]))
            texts += [self.tokenizer.decode(g) for g in generated[:count]]
        return texts

    def beam_search(self, prompt, beam_width=4, length_penalty=1.0, early_stopping=True, max_new_tokens=None,
                    truncate_prompt=False):
        """The best of `beam_width` beams, scored by GNMT's length penalty (Wu et al., 2016):
        sum of log-probs / ((5 + length) / 6) ** length_penalty, length counting the end token.
        0 scores by the plain sum (favouring short outputs); larger values favour longer ones.

        Each step runs the decoder once over all beams, the cache reordered to follow them. As in
        Hugging Face's generate, a beam that ends leaves the search and the next-best candidates
        keep `beam_width` beams alive. early_stopping=True stops once `beam_width` beams have
        ended; False goes on until no live beam can still beat the worst of them.

        Our own loop rather than keras-hub's BeamSampler: that has no length penalty, no early
        stopping and no per-step control, and runs inside a compiled loop we cannot stream from.
        """
        if beam_width < 1:
            raise ZooError(f"beam_width must be at least 1, got {beam_width}")
        budget = self._budget(max_new_tokens)
        ids = self._source_ids(prompt, truncate_prompt)
        mask, cache, cross_cache = self._encode([ids] * beam_width)

        def penalty(length):
            return ((5 + length) / 6) ** length_penalty

        beams = [[] for _ in range(beam_width)]  # each live beam's tokens and their log-probs
        beam_logprobs = [[] for _ in range(beam_width)]
        sums = np.full(beam_width, -np.inf)
        sums[0] = 0.0  # the beams start identical: expand one, or every candidate comes W times
        finished = []  # (score, tokens, logprobs, ended with the end token)
        tokens = np.full((beam_width, 1), self.start_id, dtype="int32")
        for step in range(budget):
            logits, cache = self._decode(tokens, cache, cross_cache, mask, step)
            logp = np.stack([_log_softmax(row) for row in logits])
            totals = sums[:, None] + logp
            survivors = []  # (beam, token): the best continuations that do not end
            for rank, flat in enumerate(np.argsort(-totals, axis=None, kind="stable")[:2 * beam_width]):
                beam, token = divmod(int(flat), totals.shape[1])
                if not np.isfinite(totals[beam, token]):
                    break
                if token != self.end_id:
                    survivors.append((beam, token))
                elif rank < beam_width:  # an ending outside the top W would not have been kept
                    finished.append((totals[beam, token] / penalty(step + 1), beams[beam], beam_logprobs[beam], True))
                if len(survivors) == beam_width:
                    break
            if not survivors or len(finished) >= beam_width and (
                    early_stopping or self._cannot_improve(finished, survivors, totals, beam_width, penalty,
                                                           budget if length_penalty > 0 else step + 1)):
                break
            live = len(survivors)
            survivors += [survivors[0]] * (beam_width - live)  # a tiny vocabulary: pad with dead beams
            sums = np.asarray([totals[b, t] for b, t in survivors])
            sums[live:] = -np.inf
            beams = [beams[b] + [t] for b, t in survivors]
            beam_logprobs = [beam_logprobs[b] + [float(logp[b, t])] for b, t in survivors]
            if step + 1 == budget:  # out of room: the live beams end here, unfinished
                finished += [(sums[i] / penalty(budget), beams[i], beam_logprobs[i], False) for i in range(live)]
                break
            cache = keras.ops.take(cache, np.asarray([b for b, _ in survivors], dtype="int32"), axis=0)
            tokens = np.asarray([[t] for _, t in survivors], dtype="int32")
        finished.sort(key=lambda f: -f[0])
        score, best, logprobs, ended = finished[0]
        return BeamResult(self.tokenizer.decode(best), best, FINISH_END if ended else FINISH_LENGTH, len(ids),
                          logprobs, float(score), [(b, float(s)) for s, b, _, _ in finished])

    @staticmethod
    def _cannot_improve(finished, survivors, totals, beam_width, penalty, longest):
        """Whether no live beam can beat the W-th best finished one. Log-prob sums only fall as a
        beam grows, so the best a beam can still score is its sum over the penalty's largest
        divisor: at the longest length when length_penalty > 0, else at the current one."""
        best_live = max(totals[b, t] for b, t in survivors)
        return sorted(f[0] for f in finished)[-beam_width] >= best_live / penalty(longest)


def evaluate_translations(generator, pairs, beam_width=None, examples=3, batch_size=32):
    """Corpus BLEU and chrF (sacrebleu, default settings) of the generator's translations of
    `pairs` against their targets: greedy (`batch_size` sources at a time), or beam search of
    `beam_width`.

    Returns dict(bleu, chrf, n, examples): `examples` as dicts of source, reference, hypothesis.
    """
    try:
        import sacrebleu  # only evaluation needs it: serving does not
    except ImportError:
        raise ZooError("evaluation needs sacrebleu: pip install sacrebleu") from None

    if not pairs:
        raise ZooError("no pairs to evaluate")
    sources = [source for source, _ in pairs]
    if beam_width:
        hypotheses = [generator.beam_search(s, beam_width, truncate_prompt=True).text for s in sources]
    else:
        hypotheses = generator.translate_batch(sources, batch_size=batch_size)
    references = [target for _, target in pairs]
    return {"bleu": sacrebleu.corpus_bleu(hypotheses, [references]).score,
            "chrf": sacrebleu.corpus_chrf(hypotheses, [references]).score,
            "n": len(pairs),
            "examples": [{"source": s, "reference": r, "hypothesis": h}
                         for (s, r), h in list(zip(pairs, hypotheses))[:examples]]}
