import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from redbarn.proto import remote_execution_pb2 as _remote_execution_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PredeclaredPlatformQueueConfiguration(_message.Message):
    __slots__ = ("instance_name_prefix", "platform", "size_classes", "worker_invocation_stickiness_limits", "maximum_queued_background_learning_operations", "background_learning_operation_priority")
    INSTANCE_NAME_PREFIX_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    SIZE_CLASSES_FIELD_NUMBER: _ClassVar[int]
    WORKER_INVOCATION_STICKINESS_LIMITS_FIELD_NUMBER: _ClassVar[int]
    MAXIMUM_QUEUED_BACKGROUND_LEARNING_OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    BACKGROUND_LEARNING_OPERATION_PRIORITY_FIELD_NUMBER: _ClassVar[int]
    instance_name_prefix: str
    platform: _remote_execution_pb2.Platform
    size_classes: _containers.RepeatedScalarFieldContainer[int]
    worker_invocation_stickiness_limits: _containers.RepeatedCompositeFieldContainer[_duration_pb2.Duration]
    maximum_queued_background_learning_operations: int
    background_learning_operation_priority: int
    def __init__(self, instance_name_prefix: _Optional[str] = ..., platform: _Optional[_Union[_remote_execution_pb2.Platform, _Mapping]] = ..., size_classes: _Optional[_Iterable[int]] = ..., worker_invocation_stickiness_limits: _Optional[_Iterable[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]]] = ..., maximum_queued_background_learning_operations: _Optional[int] = ..., background_learning_operation_priority: _Optional[int] = ...) -> None: ...
