"""A Python client for `zoo serve`:

    from server.client import ZooClient

    with ZooClient("127.0.0.1:8500") as client:
        print(client.generate("shakespeare", "ROMEO.", max_new_tokens=50, temperature=0).text)
        for message in client.stream("shakespeare", "ROMEO.", max_new_tokens=50):
            if message.HasField("chunk"):
                print(message.chunk.text, end="", flush=True)

Methods return the response messages of `zoo.v1` (see protos/zoo/v1/); failed calls raise
`grpc.RpcError` with the server's status code and message. For a server with TLS and tokens:

    ZooClient("models.example.com:8500", tls_ca="ca.pem", token=os.environ["ZOO_TOKEN"])
"""

import grpc

from server.gen.zoo.v1 import inference_pb2 as pb
from server.gen.zoo.v1 import inference_pb2_grpc as pb_grpc
from server.gen.zoo.v1 import model_pb2 as mpb

FINISH_REASONS = {pb.FINISH_REASON_LENGTH: "length", pb.FINISH_REASON_STOP_SEQUENCE: "stop",
                  pb.FINISH_REASON_END_TOKEN: "end_token", pb.FINISH_REASON_UNSPECIFIED: "unspecified"}


def generate_request(model, prompt=None, *, token_ids=None, version=0, max_new_tokens=None, temperature=None,
                     top_k=0, top_p=None, seed=None, stop=(), truncate_prompt=False, return_logprobs=False):
    """A GenerateRequest; None leaves an optional field unset (the server's default)."""
    sampling = pb.SamplingParams(top_k=top_k, stop_sequences=list(stop), truncate_prompt=truncate_prompt)
    for field, value in (("max_new_tokens", max_new_tokens), ("temperature", temperature), ("top_p", top_p),
                         ("seed", seed)):
        if value is not None:
            setattr(sampling, field, value)
    request = pb.GenerateRequest(model_spec=mpb.ModelSpec(name=model, version=version), sampling=sampling,
                                 return_logprobs=return_logprobs)
    if token_ids is not None:
        request.token_ids.ids.extend(token_ids)
    else:
        request.text = prompt or ""
    return request


def channel(servers, *, tls=False, tls_ca=None, tls_cert=None, tls_key=None, server_name=None, retries=True):
    """A gRPC channel to `servers`: one server, or replicas balanced round robin, the calls that
    are safe to repeat retried on another (server/replicas.py; `retries=False` retries none).
    Plain text, or TLS when `tls` or any TLS file is given (`tls_ca`: the CA to verify the server
    with, default the system's; `tls_cert`/`tls_key`: a client certificate, for mutual TLS;
    `server_name`: the name to check the certificate against, when it is not the host of `servers`)."""
    from server.replicas import grpc_target, service_config
    from server.tls import channel_credentials

    target, host_name = grpc_target(servers)
    options = [("grpc.service_config", service_config(retries)), ("grpc.enable_retries", int(retries))]
    if not (tls or tls_ca or tls_cert or tls_key):
        return grpc.insecure_channel(target, options=options)
    if server_name or host_name:  # replicas given by name were resolved here: check the name, not the IP
        options.append(("grpc.ssl_target_name_override", server_name or host_name))
    return grpc.secure_channel(target, channel_credentials(tls_ca, tls_cert, tls_key), options=options)


class ZooClient:
    """A connection to a zoo server at `target` ("host:port"), or to replicas ("host:port,host:port",
    or a DNS name with several records: see server/replicas.py). `timeout` (seconds) is the default
    deadline of every call; each method also takes `timeout=`. `token`: sent as
    `authorization: Bearer TOKEN` on every call; the TLS keywords are those of `channel`."""

    def __init__(self, target, timeout=None, *, token=None, **tls):
        self.target, self.timeout, self.tls = target, timeout, tls
        self.channel = channel(target, **tls)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else None
        self.stub = pb_grpc.InferenceServiceStub(self.channel)
        self.unretried = None  # a channel without retries, for sampled generations without a seed
        self.unretried_stub = None

    def _generation_stub(self, request):
        """The stub for a generation: retried when the request is repeatable, else not."""
        from server.replicas import is_repeatable

        if is_repeatable(request):
            return self.stub
        if self.unretried is None:
            self.unretried = channel(self.target, retries=False, **self.tls)
            self.unretried_stub = pb_grpc.InferenceServiceStub(self.unretried)
        return self.unretried_stub

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.channel.close()
        if self.unretried is not None:
            self.unretried.close()

    def wait_ready(self, timeout=10.0):
        """Blocks until the channel connects; raises grpc.FutureTimeoutError after `timeout` seconds."""
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    def _timeout(self, timeout):
        return self.timeout if timeout is None else timeout

    def generate(self, model, prompt=None, *, timeout=None, **kwargs):
        """Generates a continuation of `prompt` (text) or `token_ids=[...]`; returns a GenerateResponse.
        Keyword arguments: version, max_new_tokens, temperature, top_k, top_p, seed, stop,
        truncate_prompt, return_logprobs."""
        request = generate_request(model, prompt, **kwargs)
        return self._generation_stub(request).Generate(request, timeout=self._timeout(timeout), metadata=self.metadata)

    def stream(self, model, prompt=None, *, timeout=None, **kwargs):
        """Like generate, but yields GenerateStreamResponse messages as they arrive: chunks, then the
        final result. The returned iterator has .cancel() to stop the generation."""
        request = generate_request(model, prompt, **kwargs)
        return self._generation_stub(request).GenerateStream(request, timeout=self._timeout(timeout),
                                                             metadata=self.metadata)

    def classify(self, model, texts, *, pairs=None, version=0, timeout=None):
        """Classifies a batch of texts (with `pairs`: sentence pairs); returns a ClassifyResponse."""
        request = pb.ClassifyRequest(model_spec=mpb.ModelSpec(name=model, version=version), texts=list(texts),
                                     text_pairs=list(pairs or []))
        return self.stub.Classify(request, timeout=self._timeout(timeout), metadata=self.metadata)

    def embed(self, model, texts, *, pairs=None, version=0, timeout=None):
        """The pooled sentence vectors of a batch of texts (with `pairs`: sentence pairs); returns an
        EmbedResponse."""
        request = pb.EmbedRequest(model_spec=mpb.ModelSpec(name=model, version=version), texts=list(texts),
                                  text_pairs=list(pairs or []))
        return self.stub.Embed(request, timeout=self._timeout(timeout), metadata=self.metadata)

    def tag(self, model, texts, *, version=0, timeout=None):
        """The named entities of a batch of texts; returns a TagResponse."""
        request = pb.TagRequest(model_spec=mpb.ModelSpec(name=model, version=version), texts=list(texts))
        return self.stub.Tag(request, timeout=self._timeout(timeout), metadata=self.metadata)

    def answer(self, model, questions, context=None, *, version=0, timeout=None):
        """Answers to `questions`: strings (all from `context`) or (question, context) pairs;
        returns an AnswerResponse."""
        pairs = [(q, context) if isinstance(q, str) else q for q in questions]
        request = pb.AnswerRequest(model_spec=mpb.ModelSpec(name=model, version=version),
                                   questions=[pb.QuestionContext(question=q, context=c) for q, c in pairs])
        return self.stub.Answer(request, timeout=self._timeout(timeout), metadata=self.metadata)

    def list_models(self, *, timeout=None):
        """The served models (their highest versions), as a list of ModelInfo."""
        return list(self.stub.ListModels(mpb.ListModelsRequest(), timeout=self._timeout(timeout), metadata=self.metadata).models)

    def model_info(self, model, *, version=0, timeout=None):
        """The ModelInfo of a model version (0: the highest)."""
        request = mpb.GetModelInfoRequest(model_spec=mpb.ModelSpec(name=model, version=version))
        return self.stub.GetModelInfo(request, timeout=self._timeout(timeout), metadata=self.metadata).model


def response_dict(response):
    """A GenerateResponse as plain data, shaped like `zoo generate --json` plus usage and model."""
    data = {"text": response.text, "token_ids": list(response.token_ids),
            "finish_reason": FINISH_REASONS[response.finish_reason], "prompt_tokens": response.usage.prompt_tokens,
            "generated_tokens": response.usage.generated_tokens, "model": response.model_spec.name,
            "version": response.model_spec.version}
    if response.logprobs:
        data["logprobs"] = [p.logprob for p in response.logprobs]
    return data


def _enum_name(enum, value, prefix):
    return enum.Name(value).removeprefix(prefix).lower()


def model_info_dict(info):
    """A ModelInfo as plain data."""
    from google.protobuf.json_format import MessageToDict

    p = info.provenance
    return {
        "name": info.model_spec.name, "version": info.model_spec.version, "versions": list(info.versions),
        "kind": _enum_name(mpb.ModelKind, info.kind, "MODEL_KIND_"),
        "task": _enum_name(mpb.Task, info.task, "TASK_"), "labels": list(info.labels),
        "context_length": info.context_length, "max_new_tokens": info.max_new_tokens,
        "tokenizer": {"kind": _enum_name(mpb.TokenizerKind, info.tokenizer.kind, "TOKENIZER_KIND_"),
                      "vocabulary_size": info.tokenizer.vocabulary_size, "end_token": info.tokenizer.end_token,
                      "end_token_id": info.tokenizer.end_token_id},
        "serving_backend": _enum_name(mpb.Backend, info.serving_backend, "BACKEND_"),
        "provenance": {
            "backend": _enum_name(mpb.Backend, p.backend, "BACKEND_"), "library_versions": dict(p.library_versions),
            "data": {"path": p.data.path, "sha256": p.data.sha256, "train_tokens": p.data.train_tokens,
                     "val_tokens": p.data.val_tokens},
            "steps": p.steps, "final_metrics": dict(p.final_metrics),
            "train_settings": MessageToDict(p.train_settings), "command": list(p.command)},
    }
