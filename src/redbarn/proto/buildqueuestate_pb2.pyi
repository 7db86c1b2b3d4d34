import datetime

from redbarn.proto import remote_execution_pb2 as _remote_execution_pb2
from google.protobuf import any_pb2 as _any_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PlatformQueueName(_message.Message):
    __slots__ = ("instance_name_prefix", "platform")
    INSTANCE_NAME_PREFIX_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    instance_name_prefix: str
    platform: _remote_execution_pb2.Platform
    def __init__(self, instance_name_prefix: _Optional[str] = ..., platform: _Optional[_Union[_remote_execution_pb2.Platform, _Mapping]] = ...) -> None: ...

class SizeClassQueueName(_message.Message):
    __slots__ = ("platform_queue_name", "size_class")
    PLATFORM_QUEUE_NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_CLASS_FIELD_NUMBER: _ClassVar[int]
    platform_queue_name: PlatformQueueName
    size_class: int
    def __init__(self, platform_queue_name: _Optional[_Union[PlatformQueueName, _Mapping]] = ..., size_class: _Optional[int] = ...) -> None: ...

class InvocationName(_message.Message):
    __slots__ = ("size_class_queue_name", "ids")
    SIZE_CLASS_QUEUE_NAME_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    size_class_queue_name: SizeClassQueueName
    ids: _containers.RepeatedCompositeFieldContainer[_any_pb2.Any]
    def __init__(self, size_class_queue_name: _Optional[_Union[SizeClassQueueName, _Mapping]] = ..., ids: _Optional[_Iterable[_Union[_any_pb2.Any, _Mapping]]] = ...) -> None: ...

class BackgroundLearning(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PaginationInfo(_message.Message):
    __slots__ = ("start_index", "total_entries")
    START_INDEX_FIELD_NUMBER: _ClassVar[int]
    TOTAL_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    start_index: int
    total_entries: int
    def __init__(self, start_index: _Optional[int] = ..., total_entries: _Optional[int] = ...) -> None: ...

class OperationState(_message.Message):
    __slots__ = ("name", "invocation_name", "queued_timestamp", "action_digest", "timeout", "queued", "executing", "completed", "target_id", "priority", "instance_name_suffix", "expected_duration", "digest_function")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INVOCATION_NAME_FIELD_NUMBER: _ClassVar[int]
    QUEUED_TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    ACTION_DIGEST_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    EXECUTING_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    TARGET_ID_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_NAME_SUFFIX_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_DURATION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FUNCTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    invocation_name: InvocationName
    queued_timestamp: _timestamp_pb2.Timestamp
    action_digest: _remote_execution_pb2.Digest
    timeout: _timestamp_pb2.Timestamp
    queued: _empty_pb2.Empty
    executing: _empty_pb2.Empty
    completed: _remote_execution_pb2.ExecuteResponse
    target_id: str
    priority: int
    instance_name_suffix: str
    expected_duration: _duration_pb2.Duration
    digest_function: _remote_execution_pb2.DigestFunction.Value
    def __init__(self, name: _Optional[str] = ..., invocation_name: _Optional[_Union[InvocationName, _Mapping]] = ..., queued_timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., action_digest: _Optional[_Union[_remote_execution_pb2.Digest, _Mapping]] = ..., timeout: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., queued: _Optional[_Union[_empty_pb2.Empty, _Mapping]] = ..., executing: _Optional[_Union[_empty_pb2.Empty, _Mapping]] = ..., completed: _Optional[_Union[_remote_execution_pb2.ExecuteResponse, _Mapping]] = ..., target_id: _Optional[str] = ..., priority: _Optional[int] = ..., instance_name_suffix: _Optional[str] = ..., expected_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., digest_function: _Optional[_Union[_remote_execution_pb2.DigestFunction.Value, str]] = ...) -> None: ...

class SizeClassQueueState(_message.Message):
    __slots__ = ("size_class", "timeout", "workers_count", "drains_count", "root_invocation")
    SIZE_CLASS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    WORKERS_COUNT_FIELD_NUMBER: _ClassVar[int]
    DRAINS_COUNT_FIELD_NUMBER: _ClassVar[int]
    ROOT_INVOCATION_FIELD_NUMBER: _ClassVar[int]
    size_class: int
    timeout: _timestamp_pb2.Timestamp
    workers_count: int
    drains_count: int
    root_invocation: InvocationState
    def __init__(self, size_class: _Optional[int] = ..., timeout: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., workers_count: _Optional[int] = ..., drains_count: _Optional[int] = ..., root_invocation: _Optional[_Union[InvocationState, _Mapping]] = ...) -> None: ...

class PlatformQueueState(_message.Message):
    __slots__ = ("name", "size_class_queues")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_CLASS_QUEUES_FIELD_NUMBER: _ClassVar[int]
    name: PlatformQueueName
    size_class_queues: _containers.RepeatedCompositeFieldContainer[SizeClassQueueState]
    def __init__(self, name: _Optional[_Union[PlatformQueueName, _Mapping]] = ..., size_class_queues: _Optional[_Iterable[_Union[SizeClassQueueState, _Mapping]]] = ...) -> None: ...

class InvocationState(_message.Message):
    __slots__ = ("queued_operations_count", "executing_workers_count", "idle_workers_count", "idle_synchronizing_workers_count", "children_count", "active_children_count", "queued_children_count")
    class InvocationObjectCount(_message.Message):
        __slots__ = ("direct", "indirect")
        DIRECT_FIELD_NUMBER: _ClassVar[int]
        INDIRECT_FIELD_NUMBER: _ClassVar[int]
        direct: int
        indirect: int
        def __init__(self, direct: _Optional[int] = ..., indirect: _Optional[int] = ...) -> None: ...
    QUEUED_OPERATIONS_COUNT_FIELD_NUMBER: _ClassVar[int]
    EXECUTING_WORKERS_COUNT_FIELD_NUMBER: _ClassVar[int]
    IDLE_WORKERS_COUNT_FIELD_NUMBER: _ClassVar[int]
    IDLE_SYNCHRONIZING_WORKERS_COUNT_FIELD_NUMBER: _ClassVar[int]
    CHILDREN_COUNT_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_CHILDREN_COUNT_FIELD_NUMBER: _ClassVar[int]
    QUEUED_CHILDREN_COUNT_FIELD_NUMBER: _ClassVar[int]
    queued_operations_count: InvocationState.InvocationObjectCount
    executing_workers_count: int
    idle_workers_count: int
    idle_synchronizing_workers_count: int
    children_count: int
    active_children_count: int
    queued_children_count: int
    def __init__(self, queued_operations_count: _Optional[_Union[InvocationState.InvocationObjectCount, _Mapping]] = ..., executing_workers_count: _Optional[int] = ..., idle_workers_count: _Optional[int] = ..., idle_synchronizing_workers_count: _Optional[int] = ..., children_count: _Optional[int] = ..., active_children_count: _Optional[int] = ..., queued_children_count: _Optional[int] = ...) -> None: ...

class InvocationChildState(_message.Message):
    __slots__ = ("id", "state")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    id: _any_pb2.Any
    state: InvocationState
    def __init__(self, id: _Optional[_Union[_any_pb2.Any, _Mapping]] = ..., state: _Optional[_Union[InvocationState, _Mapping]] = ...) -> None: ...

class WorkerState(_message.Message):
    __slots__ = ("id", "timeout", "current_operation", "drained")
    class IdEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    CURRENT_OPERATION_FIELD_NUMBER: _ClassVar[int]
    DRAINED_FIELD_NUMBER: _ClassVar[int]
    id: _containers.ScalarMap[str, str]
    timeout: _timestamp_pb2.Timestamp
    current_operation: OperationState
    drained: bool
    def __init__(self, id: _Optional[_Mapping[str, str]] = ..., timeout: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., current_operation: _Optional[_Union[OperationState, _Mapping]] = ..., drained: _Optional[bool] = ...) -> None: ...

class DrainState(_message.Message):
    __slots__ = ("worker_id_pattern", "created_timestamp")
    class WorkerIdPatternEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    WORKER_ID_PATTERN_FIELD_NUMBER: _ClassVar[int]
    CREATED_TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    worker_id_pattern: _containers.ScalarMap[str, str]
    created_timestamp: _timestamp_pb2.Timestamp
    def __init__(self, worker_id_pattern: _Optional[_Mapping[str, str]] = ..., created_timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetOperationRequest(_message.Message):
    __slots__ = ("operation_name",)
    OPERATION_NAME_FIELD_NUMBER: _ClassVar[int]
    operation_name: str
    def __init__(self, operation_name: _Optional[str] = ...) -> None: ...

class GetOperationResponse(_message.Message):
    __slots__ = ("operation",)
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    operation: OperationState
    def __init__(self, operation: _Optional[_Union[OperationState, _Mapping]] = ...) -> None: ...

class ListOperationsRequest(_message.Message):
    __slots__ = ("page_size", "start_after", "filter_invocation_id", "filter_stage")
    class StartAfter(_message.Message):
        __slots__ = ("operation_name",)
        OPERATION_NAME_FIELD_NUMBER: _ClassVar[int]
        operation_name: str
        def __init__(self, operation_name: _Optional[str] = ...) -> None: ...
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    START_AFTER_FIELD_NUMBER: _ClassVar[int]
    FILTER_INVOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    FILTER_STAGE_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    start_after: ListOperationsRequest.StartAfter
    filter_invocation_id: _any_pb2.Any
    filter_stage: _remote_execution_pb2.ExecutionStage.Value
    def __init__(self, page_size: _Optional[int] = ..., start_after: _Optional[_Union[ListOperationsRequest.StartAfter, _Mapping]] = ..., filter_invocation_id: _Optional[_Union[_any_pb2.Any, _Mapping]] = ..., filter_stage: _Optional[_Union[_remote_execution_pb2.ExecutionStage.Value, str]] = ...) -> None: ...

class ListOperationsResponse(_message.Message):
    __slots__ = ("operations", "pagination_info")
    OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    PAGINATION_INFO_FIELD_NUMBER: _ClassVar[int]
    operations: _containers.RepeatedCompositeFieldContainer[OperationState]
    pagination_info: PaginationInfo
    def __init__(self, operations: _Optional[_Iterable[_Union[OperationState, _Mapping]]] = ..., pagination_info: _Optional[_Union[PaginationInfo, _Mapping]] = ...) -> None: ...

class KillOperationsRequest(_message.Message):
    __slots__ = ("filter", "status")
    class Filter(_message.Message):
        __slots__ = ("operation_name", "size_class_queue_without_workers")
        OPERATION_NAME_FIELD_NUMBER: _ClassVar[int]
        SIZE_CLASS_QUEUE_WITHOUT_WORKERS_FIELD_NUMBER: _ClassVar[int]
        operation_name: str
        size_class_queue_without_workers: SizeClassQueueName
        def __init__(self, operation_name: _Optional[str] = ..., size_class_queue_without_workers: _Optional[_Union[SizeClassQueueName, _Mapping]] = ...) -> None: ...
    FILTER_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    filter: KillOperationsRequest.Filter
    status: _status_pb2.Status
    def __init__(self, filter: _Optional[_Union[KillOperationsRequest.Filter, _Mapping]] = ..., status: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...

class ListPlatformQueuesResponse(_message.Message):
    __slots__ = ("platform_queues",)
    PLATFORM_QUEUES_FIELD_NUMBER: _ClassVar[int]
    platform_queues: _containers.RepeatedCompositeFieldContainer[PlatformQueueState]
    def __init__(self, platform_queues: _Optional[_Iterable[_Union[PlatformQueueState, _Mapping]]] = ...) -> None: ...

class ListInvocationChildrenRequest(_message.Message):
    __slots__ = ("invocation_name", "filter")
    class Filter(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ALL: _ClassVar[ListInvocationChildrenRequest.Filter]
        ACTIVE: _ClassVar[ListInvocationChildrenRequest.Filter]
        QUEUED: _ClassVar[ListInvocationChildrenRequest.Filter]
    ALL: ListInvocationChildrenRequest.Filter
    ACTIVE: ListInvocationChildrenRequest.Filter
    QUEUED: ListInvocationChildrenRequest.Filter
    INVOCATION_NAME_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    invocation_name: InvocationName
    filter: ListInvocationChildrenRequest.Filter
    def __init__(self, invocation_name: _Optional[_Union[InvocationName, _Mapping]] = ..., filter: _Optional[_Union[ListInvocationChildrenRequest.Filter, str]] = ...) -> None: ...

class ListInvocationChildrenResponse(_message.Message):
    __slots__ = ("children",)
    CHILDREN_FIELD_NUMBER: _ClassVar[int]
    children: _containers.RepeatedCompositeFieldContainer[InvocationChildState]
    def __init__(self, children: _Optional[_Iterable[_Union[InvocationChildState, _Mapping]]] = ...) -> None: ...

class ListQueuedOperationsRequest(_message.Message):
    __slots__ = ("invocation_name", "page_size", "start_after")
    class StartAfter(_message.Message):
        __slots__ = ("priority", "queued_timestamp", "expected_duration")
        PRIORITY_FIELD_NUMBER: _ClassVar[int]
        QUEUED_TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
        EXPECTED_DURATION_FIELD_NUMBER: _ClassVar[int]
        priority: int
        queued_timestamp: _timestamp_pb2.Timestamp
        expected_duration: _duration_pb2.Duration
        def __init__(self, priority: _Optional[int] = ..., queued_timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expected_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...
    INVOCATION_NAME_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    START_AFTER_FIELD_NUMBER: _ClassVar[int]
    invocation_name: InvocationName
    page_size: int
    start_after: ListQueuedOperationsRequest.StartAfter
    def __init__(self, invocation_name: _Optional[_Union[InvocationName, _Mapping]] = ..., page_size: _Optional[int] = ..., start_after: _Optional[_Union[ListQueuedOperationsRequest.StartAfter, _Mapping]] = ...) -> None: ...

class ListQueuedOperationsResponse(_message.Message):
    __slots__ = ("queued_operations", "pagination_info")
    QUEUED_OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    PAGINATION_INFO_FIELD_NUMBER: _ClassVar[int]
    queued_operations: _containers.RepeatedCompositeFieldContainer[OperationState]
    pagination_info: PaginationInfo
    def __init__(self, queued_operations: _Optional[_Iterable[_Union[OperationState, _Mapping]]] = ..., pagination_info: _Optional[_Union[PaginationInfo, _Mapping]] = ...) -> None: ...

class ListWorkersRequest(_message.Message):
    __slots__ = ("filter", "page_size", "start_after")
    class Filter(_message.Message):
        __slots__ = ("all", "executing", "idle_synchronizing")
        ALL_FIELD_NUMBER: _ClassVar[int]
        EXECUTING_FIELD_NUMBER: _ClassVar[int]
        IDLE_SYNCHRONIZING_FIELD_NUMBER: _ClassVar[int]
        all: SizeClassQueueName
        executing: InvocationName
        idle_synchronizing: InvocationName
        def __init__(self, all: _Optional[_Union[SizeClassQueueName, _Mapping]] = ..., executing: _Optional[_Union[InvocationName, _Mapping]] = ..., idle_synchronizing: _Optional[_Union[InvocationName, _Mapping]] = ...) -> None: ...
    class StartAfter(_message.Message):
        __slots__ = ("worker_id",)
        class WorkerIdEntry(_message.Message):
            __slots__ = ("key", "value")
            KEY_FIELD_NUMBER: _ClassVar[int]
            VALUE_FIELD_NUMBER: _ClassVar[int]
            key: str
            value: str
            def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
        WORKER_ID_FIELD_NUMBER: _ClassVar[int]
        worker_id: _containers.ScalarMap[str, str]
        def __init__(self, worker_id: _Optional[_Mapping[str, str]] = ...) -> None: ...
    FILTER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    START_AFTER_FIELD_NUMBER: _ClassVar[int]
    filter: ListWorkersRequest.Filter
    page_size: int
    start_after: ListWorkersRequest.StartAfter
    def __init__(self, filter: _Optional[_Union[ListWorkersRequest.Filter, _Mapping]] = ..., page_size: _Optional[int] = ..., start_after: _Optional[_Union[ListWorkersRequest.StartAfter, _Mapping]] = ...) -> None: ...

class ListWorkersResponse(_message.Message):
    __slots__ = ("workers", "pagination_info")
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    PAGINATION_INFO_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerState]
    pagination_info: PaginationInfo
    def __init__(self, workers: _Optional[_Iterable[_Union[WorkerState, _Mapping]]] = ..., pagination_info: _Optional[_Union[PaginationInfo, _Mapping]] = ...) -> None: ...

class TerminateWorkersRequest(_message.Message):
    __slots__ = ("worker_id_pattern",)
    class WorkerIdPatternEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    WORKER_ID_PATTERN_FIELD_NUMBER: _ClassVar[int]
    worker_id_pattern: _containers.ScalarMap[str, str]
    def __init__(self, worker_id_pattern: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ListDrainsRequest(_message.Message):
    __slots__ = ("size_class_queue_name",)
    SIZE_CLASS_QUEUE_NAME_FIELD_NUMBER: _ClassVar[int]
    size_class_queue_name: SizeClassQueueName
    def __init__(self, size_class_queue_name: _Optional[_Union[SizeClassQueueName, _Mapping]] = ...) -> None: ...

class ListDrainsResponse(_message.Message):
    __slots__ = ("drains",)
    DRAINS_FIELD_NUMBER: _ClassVar[int]
    drains: _containers.RepeatedCompositeFieldContainer[DrainState]
    def __init__(self, drains: _Optional[_Iterable[_Union[DrainState, _Mapping]]] = ...) -> None: ...

class AddOrRemoveDrainRequest(_message.Message):
    __slots__ = ("size_class_queue_name", "worker_id_pattern")
    class WorkerIdPatternEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SIZE_CLASS_QUEUE_NAME_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_PATTERN_FIELD_NUMBER: _ClassVar[int]
    size_class_queue_name: SizeClassQueueName
    worker_id_pattern: _containers.ScalarMap[str, str]
    def __init__(self, size_class_queue_name: _Optional[_Union[SizeClassQueueName, _Mapping]] = ..., worker_id_pattern: _Optional[_Mapping[str, str]] = ...) -> None: ...
