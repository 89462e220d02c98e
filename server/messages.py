"""Proto <-> domain objects, and the checks of a request's fields, for the gRPC handlers.

Requests become what the library takes (a prompt, a `SamplingConfig`, (text, pair) items);
results become response messages. Errors become a status code and a message that names the proto
field (`status_of`). Sampling settings are checked by `SamplingConfig.validate()`, the check
`zoo generate` runs, whose errors name their setting: here it is spelled as the proto field
(`sampling.top_p`). Enums are looked up by name (`MODEL_KIND_` + the family's name, ...), so a new
family, tokenizer or backend needs no code here: without an enum value of its own it shows as
UNSPECIFIED.
"""

import grpc
from google.protobuf import struct_pb2

from server.continuous import QueueFull
from server.gen.zoo.v1 import inference_pb2 as pb
from server.gen.zoo.v1 import model_pb2 as mpb
from server.status import INVALID, Abort
from zoo.engine.generation import FINISH_END, FINISH_LENGTH, FINISH_STOP, Step
from zoo.engine.sampling import SamplingConfig, SamplingError
from zoo.errors import ZooError

FINISH_REASONS = {FINISH_LENGTH: pb.FINISH_REASON_LENGTH, FINISH_STOP: pb.FINISH_REASON_STOP_SEQUENCE,
                  FINISH_END: pb.FINISH_REASON_END_TOKEN}
SAMPLING_FIELDS = {"stop": "stop_sequences"}  # SamplingConfig attribute -> SamplingParams field, where they differ
TASK_NOUNS = {"generate": "GENERATION", "classify": "CLASSIFICATION", "tag": "TOKEN_CLASSIFICATION",
              "qa": "QUESTION_ANSWERING"}  # the proto names a task by its noun


def status_of(error):
    """(status code, message) for an error that refuses a request; None for a fault of the server."""
    if isinstance(error, Abort):
        return error.code, error.message
    if isinstance(error, SamplingError):
        return INVALID, error.named("sampling." + SAMPLING_FIELDS.get(error.field, error.field))
    if isinstance(error, QueueFull):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(error)
    if isinstance(error, ZooError):  # bad input, found by the library
        return INVALID, str(error)
    return None


def enum_value(enum, prefix, name):
    """The value of `enum` called PREFIX + NAME (upper case), or its UNSPECIFIED value (0)."""
    try:
        return enum.Value(prefix + str(name).upper())
    except ValueError:
        return 0


# --- requests ------------------------------------------------------------------------------------------


def sampling_config(params, limits):
    """The SamplingConfig of a request's SamplingParams, checked (against `limits`, a
    server.limits.Limits, too); unset fields take the defaults of `zoo generate`. Raises
    SamplingError or Abort (see status_of)."""
    limits.check_stop_sequences(params.stop_sequences)
    config = SamplingConfig(
        max_new_tokens=params.max_new_tokens if params.HasField("max_new_tokens") else None,
        temperature=params.temperature if params.HasField("temperature") else 1.0, top_k=params.top_k,
        top_p=params.top_p if params.HasField("top_p") else 1.0, seed=params.seed if params.HasField("seed") else None,
        stop=tuple(params.stop_sequences), truncate_prompt=params.truncate_prompt)
    config.validate()
    return config


def prompt_of(request, vocabulary_size, limits):
    """(the prompt's field name, the prompt: text within `limits`, or a list of token ids each in
    the vocabulary)."""
    which = request.WhichOneof("prompt")
    if which == "text" and request.text:
        limits.check_text(which, request.text)
        return which, request.text
    if which == "token_ids" and request.token_ids.ids:
        prompt = list(request.token_ids.ids)
        for i, token in enumerate(prompt):
            if not 0 <= token < vocabulary_size:
                raise Abort(INVALID, f"token_ids.ids[{i}] = {token} is outside the vocabulary [0, {vocabulary_size})")
        return which, prompt
    raise Abort(INVALID, "prompt: set text or token_ids; the prompt must not be empty")


def _check_texts(texts, pairs, method, limits):
    if not texts:
        raise Abort(INVALID, f"texts: give at least one text to {method.lower()}")
    limits.check_texts(texts, pairs)
    for i, text in enumerate(texts):
        if not text.strip():
            raise Abort(INVALID, f"texts[{i}] is empty")


def tag_texts(request, limits):
    """The texts of a TagRequest, checked (against `limits` too)."""
    _check_texts(request.texts, [], "Tag", limits)
    return list(request.texts)


def question_items(request, limits):
    """[(question, context)] of an AnswerRequest, checked (against `limits` too: a question and a
    context each within --max-text-bytes, at most --max-texts questions)."""
    if not request.questions:
        raise Abort(INVALID, "questions: give at least one question to answer")
    if len(request.questions) > limits.max_texts:
        raise Abort(INVALID, f"questions: {len(request.questions)} given; at most {limits.max_texts} per request "
                             "(--max-texts)")
    for i, item in enumerate(request.questions):
        for field in ("question", "context"):
            text = getattr(item, field)
            limits.check_text(f"questions[{i}].{field}", text)
            if not text.strip():
                raise Abort(INVALID, f"questions[{i}].{field} is empty")
    return [(item.question, item.context) for item in request.questions]


def encoder_items(request, method, limits):
    """[(text, pair or None)] of a ClassifyRequest or EmbedRequest, checked (against `limits` too)."""
    _check_texts(request.texts, request.text_pairs, method, limits)
    pairs = list(request.text_pairs)
    if pairs and len(pairs) != len(request.texts):
        raise Abort(INVALID, f"text_pairs: {len(pairs)} given for {len(request.texts)} texts; give one per text, "
                             "or none")
    return list(zip(request.texts, pairs or [None] * len(request.texts)))


# --- responses -----------------------------------------------------------------------------------------


def model_spec(m):
    return mpb.ModelSpec(name=m.name, version=m.version)


def generate_response(m, result, return_logprobs):
    """The GenerateResponse of a generation's Result, for loaded model version `m`."""
    return pb.GenerateResponse(
        model_spec=model_spec(m), text=result.text, token_ids=result.token_ids,
        finish_reason=FINISH_REASONS[result.finish_reason],
        usage=pb.Usage(prompt_tokens=result.prompt_tokens, generated_tokens=len(result.token_ids)),
        logprobs=[pb.TokenLogprob(token_id=t, logprob=p) for t, p in zip(result.token_ids, result.logprobs)]
        if return_logprobs else [])


def stream_response(m, item, return_logprobs):
    """The GenerateStreamResponse of a generation's Step (a chunk), or of its Result (the final one)."""
    if isinstance(item, Step):
        tokens = [item.token_id] if item.token_id is not None else []
        logprobs = [pb.TokenLogprob(token_id=item.token_id, logprob=item.logprob)] if return_logprobs and tokens else []
        return pb.GenerateStreamResponse(chunk=pb.GenerateChunk(text=item.text, token_ids=tokens, logprobs=logprobs))
    return pb.GenerateStreamResponse(final=generate_response(m, item, return_logprobs))


def classify_response(m, labels, results):
    return pb.ClassifyResponse(model_spec=model_spec(m), results=[pb.Classification(
        label=r.label, probability=r.probability, truncated=r.truncated,
        classes=[pb.ClassProbability(label=label, probability=float(p)) for label, p in zip(labels, r.probabilities)])
        for r in results])


def embed_response(m, results):
    """`results`: (vector, truncated) per text."""
    return pb.EmbedResponse(model_spec=model_spec(m), embeddings=[pb.Embedding(values=vector.tolist(), truncated=bool(cut))
                                                                  for vector, cut in results])


def model_info(m, versions, serving_backend, max_new_tokens=0):
    """The ModelInfo of loaded model version `m`; `max_new_tokens`: the most one request may
    generate (0 for a model that does not generate)."""
    info, provenance = m.info, m.info.provenance or {}
    end_token = (info.special_tokens or {}).get("end", "")
    data = provenance.get("data") or {}
    train = struct_pb2.Struct()
    train.update(provenance.get("train") or {})
    return mpb.ModelInfo(
        model_spec=model_spec(m), versions=versions, kind=enum_value(mpb.ModelKind, "MODEL_KIND_", info.kind),
        task=enum_value(mpb.Task, "TASK_", TASK_NOUNS.get(info.task, info.task)),
        labels=info.labels or [], context_length=m.context_length, max_new_tokens=max_new_tokens,
        tokenizer=mpb.TokenizerInfo(kind=enum_value(mpb.TokenizerKind, "TOKENIZER_KIND_", m.tokenizer.kind),
                                    vocabulary_size=m.tokenizer.vocabulary_size,
                                    end_token=end_token, end_token_id=m.tokenizer.token_to_id(end_token) or 0),
        serving_backend=enum_value(mpb.Backend, "BACKEND_", serving_backend),
        provenance=mpb.Provenance(
            backend=enum_value(mpb.Backend, "BACKEND_", provenance.get("backend")),
            library_versions={k: str(v) for k, v in (provenance.get("versions") or {}).items() if v is not None},
            data=mpb.TrainingData(path=str(data.get("path") or ""), sha256=data.get("sha256") or "",
                                  train_tokens=data.get("train_tokens") or 0, val_tokens=data.get("val_tokens") or 0),
            steps=provenance.get("steps") or 0,
            final_metrics={k: float(v) for k, v in (provenance.get("final_metrics") or {}).items()},
            train_settings=train, command=[str(c) for c in provenance.get("command") or []],
            pretrained=_pretrained_source(provenance.get("pretrained"))))


def _pretrained_source(pretrained):
    """The PretrainedSource of an imported bundle's provenance; None (unset) for a trained one."""
    if not pretrained:
        return None
    return mpb.PretrainedSource(source=pretrained.get("source") or "", revision=pretrained.get("revision") or "",
                                architecture=pretrained.get("architecture") or "",
                                weight_sha256=pretrained.get("weight_files") or {},
                                license=pretrained.get("license") or "")


def tag_response(m, results):
    """The TagResponse of a TaggedText per text (zoo.families.bert.tagger), for loaded version `m`."""
    return pb.TagResponse(model_spec=model_spec(m), results=[
        pb.TaggedText(entities=[pb.Entity(label=e.label, text=e.text, start=e.start, end=e.end, score=e.score)
                                for e in result.entities], truncated=result.truncated)
        for result in results])


def answer_response(m, answers):
    """The AnswerResponse of an Answer per question (zoo.families.bert.answerer), for version `m`."""
    return pb.AnswerResponse(model_spec=model_spec(m), answers=[
        pb.SpanAnswer(text=a.text, start=a.start, end=a.end, score=a.score) for a in answers])
