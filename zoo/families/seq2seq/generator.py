"""Translation (any sequence-to-sequence task) with a Seq2Seq model: streaming greedy or sampled
decoding with the interface of the GPT's `Generator`, beam search, and BLEU / chrF evaluation.

Everything runs on the model's shared decode engine (`zoo.engine.backends.engine_for`), as the
GPT's generation does. The engine's prompt is the decoder's start token and then the source's ids:
prefill encodes the source once, puts each decoder layer's cross-attention keys/values of it (and
its padding mask) in the request's slot and runs the start token at target position 0; then the
decoder runs one token per row per step, each row at its own position. So one loop
(`zoo.engine.generation.stream` and `Continuation`) serves `zoo translate` and the server, whose
continuous batcher batches seq2seq requests as it does GPT ones. The decoder starts from the end
token, as BART starts from </s> (or from the model's decoder_start_token_id: Marian's <pad>). Tokens are picked on the host by `zoo.engine.sampling.sample`, as
for the GPT and for the same reason (keras-hub's samplers run their whole loop inside one compiled
call: no streaming, no stop strings).
"""

import dataclasses

import numpy as np

from zoo.engine.generation import FINISH_END, FINISH_LENGTH, Continuation, EngineGenerator, Result, run_stream, stream
from zoo.engine.sampling import SamplingConfig, log_softmax
from zoo.engine.slots import generate_all
from zoo.errors import ZooError


@dataclasses.dataclass
class BeamResult(Result):
    """The best hypothesis as a Result, its score, and every finished beam as (token_ids, score),
    best first. score = sum of log-probs / ((5 + length) / 6) ** length_penalty."""

    score: float
    beams: list


class Seq2SeqGenerator(EngineGenerator):
    """Generates a target text from a source text, with a Seq2Seq model and its two tokenizers
    (the same object twice for a shared vocabulary).

    Steps run on `engine` (see EngineGenerator: by default the model's shared compiled engine).
    """

    continues_prompt = False  # the output is a new text (a translation, a summary), not a continuation

    def __init__(self, model, source_tokenizer, target_tokenizer, engine=None):
        super().__init__(model, engine)
        self.source_tokenizer, self.tokenizer = source_tokenizer, target_tokenizer
        self.start_id = self.end_id = target_tokenizer.end_token_id
        if model.decoder_start_token_id is not None:  # an imported model's own (Marian's: its pad token)
            self.start_id = model.decoder_start_token_id
        self.max_length = model.max_target_length

    def prompt_ids(self, prompt, config):
        """The source's token ids with its end token, as in training; a source longer than the
        model's maximum is refused unless config.truncate_prompt (as Generator.prompt_ids)."""
        return self._source_ids(prompt, config.truncate_prompt)

    def _source_ids(self, prompt, truncate):
        # Truncation keeps the beginning: unlike a continuation, a translation needs the start.
        # A prompt given as token ids (a list) is taken as it is.
        ids = self.source_tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        room = self.model.max_source_length - 1
        if len(ids) > room:
            if not truncate:
                raise ZooError(f"the source has {len(ids) + 1} tokens (with the end token), more than the model's "
                               f"maximum source length of {self.model.max_source_length} (shorten it or truncate it)")
            ids = ids[:room]
        return ids + [self.source_tokenizer.end_token_id]

    def _engine_prompt(self, source_ids):
        """What the engine prefills: the decoder's start token, then the source."""
        return [self.start_id] + source_ids

    def _budget(self, max_new_tokens):
        if max_new_tokens is not None and max_new_tokens > self.max_length:
            raise ZooError(f"max_new_tokens {max_new_tokens} exceeds the model's maximum target length "
                           f"{self.max_length}")
        return max_new_tokens or self.max_length

    def start(self, prompt, config):
        """A checked request's Continuation, ready for the logits of its prompt (the engine's
        prefill of `continuation.prompt_ids`). Its Result counts the source's tokens as the prompt."""
        config.validate()
        budget = self._budget(config.max_new_tokens)
        source = self.prompt_ids(prompt, config)
        ids = self._engine_prompt(source)
        return Continuation(self.tokenizer, ids, config, budget, first_position=self.engine.first_position(ids),
                            prompt_tokens=len(source))

    def stream(self, prompt, config):
        """Yields a Step per generated token; returns (as StopIteration.value) the Result."""
        return (yield from stream(self.engine, self.start(prompt, config)))

    def generate(self, prompt, config, on_text=None):
        """Runs `stream` to the end; calls on_text(chunk) for each piece of text. Returns the Result."""
        return run_stream(self.stream(prompt, config), on_text)

    def translate_batch(self, sources, max_new_tokens=None, batch_size=32):
        """Greedy translations of many sources (for evaluation), continuously batched on
        `batch_size` slots (zoo.engine.slots): a finished source's slot takes the next at once.
        Long sources are truncated."""
        config = SamplingConfig(temperature=0, max_new_tokens=max_new_tokens, truncate_prompt=True)
        continuations = (self.start(source, config) for source in sources)  # made as slots free up
        results = dict(generate_all(self.engine, continuations, min(batch_size, len(sources))))
        return [results[i].text for i in range(len(sources))]

    def beam_search(self, prompt, beam_width=4, length_penalty=1.0, early_stopping=True, max_new_tokens=None,
                    truncate_prompt=False):
        """The best of `beam_width` beams, scored by GNMT's length penalty (Wu et al., 2016):
        sum of log-probs / ((5 + length) / 6) ** length_penalty, length counting the end token.
        0 scores by the plain sum (favouring short outputs); larger values favour longer ones.

        Each step runs the decoder once over all beams, one slot each, the cache reordered to
        follow them (`engine.reorder`). As in
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
        engine = self.engine
        row, cache = engine.prefill_slot(engine.new_cache(beam_width), 0, self._engine_prompt(ids))
        logits = np.repeat(row[None], beam_width, axis=0)  # beam 0's; the others are not expanded

        def penalty(length):
            return ((5 + length) / 6) ** length_penalty

        beams = [[] for _ in range(beam_width)]  # each live beam's tokens and their log-probs
        beam_logprobs = [[] for _ in range(beam_width)]
        sums = np.full(beam_width, -np.inf)
        sums[0] = 0.0  # the beams start identical: expand one, or every candidate comes W times
        finished = []  # (score, tokens, logprobs, ended with the end token)
        for step in range(budget):
            logp = np.stack([log_softmax(row) for row in logits])
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
            cache = engine.reorder(cache, [b for b, _ in survivors])
            tokens = np.asarray([t for _, t in survivors], dtype="int32")
            logits, cache = engine.decode(tokens, cache, np.full(beam_width, step + 1, dtype="int32"))
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
    """The scores (zoo.families.seq2seq.metrics: BLEU, chrF, ROUGE-1/2/L) of the generator's
    outputs for `pairs` against their targets: greedy (`batch_size` sources at a time), or beam
    search of `beam_width`.

    Returns dict(bleu, chrf, rouge1, rouge2, rougeL, n, examples): `examples` as dicts of source,
    reference, hypothesis.
    """
    from zoo.families.seq2seq.metrics import corpus_scores

    if not pairs:
        raise ZooError("no pairs to evaluate")
    sources = [source for source, _ in pairs]
    if beam_width:
        hypotheses = [generator.beam_search(s, beam_width, truncate_prompt=True).text for s in sources]
    else:
        hypotheses = generator.translate_batch(sources, batch_size=batch_size)
    references = [target for _, target in pairs]
    return {**corpus_scores(hypotheses, references), "n": len(pairs),
            "examples": [{"source": s, "reference": r, "hypothesis": h}
                         for (s, r), h in list(zip(pairs, hypotheses))[:examples]]}
