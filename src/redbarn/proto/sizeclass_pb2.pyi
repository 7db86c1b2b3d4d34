import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from redbarn.proto import iscc_pb2 as _iscc_pb2
from redbarn.proto import remote_execution_pb2 as _remote_execution_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Entry(_message.Message):
    __slots__ = ("stats", "pending")
    STATS_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    stats: _iscc_pb2.PreviousExecutionStats
    pending: _containers.RepeatedCompositeFieldContainer[PendingOutcome]
    def __init__(self, stats: _Optional[_Union[_iscc_pb2.PreviousExecutionStats, _Mapping]] = ..., pending: _Optional[_Iterable[_Union[PendingOutcome, _Mapping]]] = ...) -> None: ...

class PendingOutcome(_message.Message):
    __slots__ = ("action_digest", "size_class", "outcome")
    ACTION_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_CLASS_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    action_digest: str
    size_class: int
    outcome: _iscc_pb2.PreviousExecution
    def __init__(self, action_digest: _Optional[str] = ..., size_class: _Optional[int] = ..., outcome: _Optional[_Union[_iscc_pb2.PreviousExecution, _Mapping]] = ...) -> None: ...

class Learner(_message.Message):
    __slots__ = ("kind", "instance_name", "digest_function", "reduced_action_digest", "smaller_size_class", "timeout", "original_timeout", "initial_page_rank_probabilities", "action", "background_operation")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        UNKNOWN: _ClassVar[Learner.Kind]
        LARGEST: _ClassVar[Learner.Kind]
        SMALLER_FOREGROUND: _ClassVar[Learner.Kind]
        LARGEST_BACKGROUND: _ClassVar[Learner.Kind]
        SMALLER_BACKGROUND: _ClassVar[Learner.Kind]
    UNKNOWN: Learner.Kind
    LARGEST: Learner.Kind
    SMALLER_FOREGROUND: Learner.Kind
    LARGEST_BACKGROUND: Learner.Kind
    SMALLER_BACKGROUND: Learner.Kind
    class InitialPageRankProbabilitiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: float
        def __init__(self, key: _Optional[int] = ..., value: _Optional[float] = ...) -> None: ...
    KIND_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_NAME_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FUNCTION_FIELD_NUMBER: _ClassVar[int]
    REDUCED_ACTION_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SMALLER_SIZE_CLASS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    INITIAL_PAGE_RANK_PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    BACKGROUND_OPERATION_FIELD_NUMBER: _ClassVar[int]
    kind: Learner.Kind
    instance_name: str
    digest_function: _remote_execution_pb2.DigestFunction.Value
    reduced_action_digest: _remote_execution_pb2.Digest
    smaller_size_class: int
    timeout: _duration_pb2.Duration
    original_timeout: _duration_pb2.Duration
    initial_page_rank_probabilities: _containers.ScalarMap[int, float]
    action: bytes
    background_operation: str
    def __init__(self, kind: _Optional[_Union[Learner.Kind, str]] = ..., instance_name: _Optional[str] = ..., digest_function: _Optional[_Union[_remote_execution_pb2.DigestFunction.Value, str]] = ..., reduced_action_digest: _Optional[_Union[_remote_execution_pb2.Digest, _Mapping]] = ..., smaller_size_class: _Optional[int] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., original_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., initial_page_rank_probabilities: _Optional[_Mapping[int, float]] = ..., action: _Optional[bytes] = ..., background_operation: _Optional[str] = ...) -> None: ...
