from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_KIND_UNSPECIFIED: _ClassVar[ModelKind]
    MODEL_KIND_GPT: _ClassVar[ModelKind]
    MODEL_KIND_BERT: _ClassVar[ModelKind]
    MODEL_KIND_SEQ2SEQ: _ClassVar[ModelKind]

class Task(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_UNSPECIFIED: _ClassVar[Task]
    TASK_GENERATION: _ClassVar[Task]
    TASK_CLASSIFICATION: _ClassVar[Task]
    TASK_TOKEN_CLASSIFICATION: _ClassVar[Task]
    TASK_QUESTION_ANSWERING: _ClassVar[Task]

class TokenizerKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TOKENIZER_KIND_UNSPECIFIED: _ClassVar[TokenizerKind]
    TOKENIZER_KIND_CHAR: _ClassVar[TokenizerKind]
    TOKENIZER_KIND_BPE: _ClassVar[TokenizerKind]
    TOKENIZER_KIND_WORDPIECE: _ClassVar[TokenizerKind]
    TOKENIZER_KIND_SENTENCEPIECE: _ClassVar[TokenizerKind]

class Backend(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BACKEND_UNSPECIFIED: _ClassVar[Backend]
    BACKEND_JAX: _ClassVar[Backend]
    BACKEND_TENSORFLOW: _ClassVar[Backend]
    BACKEND_TORCH: _ClassVar[Backend]
MODEL_KIND_UNSPECIFIED: ModelKind
MODEL_KIND_GPT: ModelKind
MODEL_KIND_BERT: ModelKind
MODEL_KIND_SEQ2SEQ: ModelKind
TASK_UNSPECIFIED: Task
TASK_GENERATION: Task
TASK_CLASSIFICATION: Task
TASK_TOKEN_CLASSIFICATION: Task
TASK_QUESTION_ANSWERING: Task
TOKENIZER_KIND_UNSPECIFIED: TokenizerKind
TOKENIZER_KIND_CHAR: TokenizerKind
TOKENIZER_KIND_BPE: TokenizerKind
TOKENIZER_KIND_WORDPIECE: TokenizerKind
TOKENIZER_KIND_SENTENCEPIECE: TokenizerKind
BACKEND_UNSPECIFIED: Backend
BACKEND_JAX: Backend
BACKEND_TENSORFLOW: Backend
BACKEND_TORCH: Backend

class ModelSpec(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class TokenizerInfo(_message.Message):
    __slots__ = ("kind", "vocabulary_size", "end_token", "end_token_id")
    KIND_FIELD_NUMBER: _ClassVar[int]
    VOCABULARY_SIZE_FIELD_NUMBER: _ClassVar[int]
    END_TOKEN_FIELD_NUMBER: _ClassVar[int]
    END_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    kind: TokenizerKind
    vocabulary_size: int
    end_token: str
    end_token_id: int
    def __init__(self, kind: _Optional[_Union[TokenizerKind, str]] = ..., vocabulary_size: _Optional[int] = ..., end_token: _Optional[str] = ..., end_token_id: _Optional[int] = ...) -> None: ...

class TrainingData(_message.Message):
    __slots__ = ("path", "sha256", "train_tokens", "val_tokens")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    TRAIN_TOKENS_FIELD_NUMBER: _ClassVar[int]
    VAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    path: str
    sha256: str
    train_tokens: int
    val_tokens: int
    def __init__(self, path: _Optional[str] = ..., sha256: _Optional[str] = ..., train_tokens: _Optional[int] = ..., val_tokens: _Optional[int] = ...) -> None: ...

class Provenance(_message.Message):
    __slots__ = ("backend", "library_versions", "data", "steps", "final_metrics", "train_settings", "command", "pretrained")
    class LibraryVersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class FinalMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    LIBRARY_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    FINAL_METRICS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SETTINGS_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    PRETRAINED_FIELD_NUMBER: _ClassVar[int]
    backend: Backend
    library_versions: _containers.ScalarMap[str, str]
    data: TrainingData
    steps: int
    final_metrics: _containers.ScalarMap[str, float]
    train_settings: _struct_pb2.Struct
    command: _containers.RepeatedScalarFieldContainer[str]
    pretrained: PretrainedSource
    def __init__(self, backend: _Optional[_Union[Backend, str]] = ..., library_versions: _Optional[_Mapping[str, str]] = ..., data: _Optional[_Union[TrainingData, _Mapping]] = ..., steps: _Optional[int] = ..., final_metrics: _Optional[_Mapping[str, float]] = ..., train_settings: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., command: _Optional[_Iterable[str]] = ..., pretrained: _Optional[_Union[PretrainedSource, _Mapping]] = ...) -> None: ...

class PretrainedSource(_message.Message):
    __slots__ = ("source", "revision", "architecture", "weight_sha256", "license")
    class WeightSha256Entry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_SHA256_FIELD_NUMBER: _ClassVar[int]
    LICENSE_FIELD_NUMBER: _ClassVar[int]
    source: str
    revision: str
    architecture: str
    weight_sha256: _containers.ScalarMap[str, str]
    license: str
    def __init__(self, source: _Optional[str] = ..., revision: _Optional[str] = ..., architecture: _Optional[str] = ..., weight_sha256: _Optional[_Mapping[str, str]] = ..., license: _Optional[str] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("model_spec", "versions", "kind", "task", "labels", "context_length", "tokenizer", "serving_backend", "provenance", "max_new_tokens")
    MODEL_SPEC_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FIELD_NUMBER: _ClassVar[int]
    SERVING_BACKEND_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    model_spec: ModelSpec
    versions: _containers.RepeatedScalarFieldContainer[int]
    kind: ModelKind
    task: Task
    labels: _containers.RepeatedScalarFieldContainer[str]
    context_length: int
    tokenizer: TokenizerInfo
    serving_backend: Backend
    provenance: Provenance
    max_new_tokens: int
    def __init__(self, model_spec: _Optional[_Union[ModelSpec, _Mapping]] = ..., versions: _Optional[_Iterable[int]] = ..., kind: _Optional[_Union[ModelKind, str]] = ..., task: _Optional[_Union[Task, str]] = ..., labels: _Optional[_Iterable[str]] = ..., context_length: _Optional[int] = ..., tokenizer: _Optional[_Union[TokenizerInfo, _Mapping]] = ..., serving_backend: _Optional[_Union[Backend, str]] = ..., provenance: _Optional[_Union[Provenance, _Mapping]] = ..., max_new_tokens: _Optional[int] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ("model_spec",)
    MODEL_SPEC_FIELD_NUMBER: _ClassVar[int]
    model_spec: ModelSpec
    def __init__(self, model_spec: _Optional[_Union[ModelSpec, _Mapping]] = ...) -> None: ...

class GetModelInfoResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: ModelInfo
    def __init__(self, model: _Optional[_Union[ModelInfo, _Mapping]] = ...) -> None: ...
