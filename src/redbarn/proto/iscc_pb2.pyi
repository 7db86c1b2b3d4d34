import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PreviousExecution(_message.Message):
    __slots__ = ("failed", "timed_out", "succeeded")
    FAILED_FIELD_NUMBER: _ClassVar[int]
    TIMED_OUT_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    failed: _empty_pb2.Empty
    timed_out: _duration_pb2.Duration
    succeeded: _duration_pb2.Duration
    def __init__(self, failed: _Optional[_Union[_empty_pb2.Empty, _Mapping]] = ..., timed_out: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., succeeded: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class PerSizeClassStats(_message.Message):
    __slots__ = ("previous_executions", "initial_page_rank_probability")
    PREVIOUS_EXECUTIONS_FIELD_NUMBER: _ClassVar[int]
    INITIAL_PAGE_RANK_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    previous_executions: _containers.RepeatedCompositeFieldContainer[PreviousExecution]
    initial_page_rank_probability: float
    def __init__(self, previous_executions: _Optional[_Iterable[_Union[PreviousExecution, _Mapping]]] = ..., initial_page_rank_probability: _Optional[float] = ...) -> None: ...

class PreviousExecutionStats(_message.Message):
    __slots__ = ("size_classes", "last_seen_failure")
    class SizeClassesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: PerSizeClassStats
        def __init__(self, key: _Optional[int] = ..., value: _Optional[_Union[PerSizeClassStats, _Mapping]] = ...) -> None: ...
    SIZE_CLASSES_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FAILURE_FIELD_NUMBER: _ClassVar[int]
    size_classes: _containers.MessageMap[int, PerSizeClassStats]
    last_seen_failure: _timestamp_pb2.Timestamp
    def __init__(self, size_classes: _Optional[_Mapping[int, PerSizeClassStats]] = ..., last_seen_failure: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
