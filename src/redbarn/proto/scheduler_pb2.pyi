import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import empty_pb2 as _empty_pb2
from redbarn.proto import remote_execution_pb2 as _remote_execution_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ActionRouterConfiguration(_message.Message):
    __slots__ = ("simple", "demultiplexing")
    SIMPLE_FIELD_NUMBER: _ClassVar[int]
    DEMULTIPLEXING_FIELD_NUMBER: _ClassVar[int]
    simple: SimpleActionRouterConfiguration
    demultiplexing: DemultiplexingActionRouterConfiguration
    def __init__(self, simple: _Optional[_Union[SimpleActionRouterConfiguration, _Mapping]] = ..., demultiplexing: _Optional[_Union[DemultiplexingActionRouterConfiguration, _Mapping]] = ...) -> None: ...

class SimpleActionRouterConfiguration(_message.Message):
    __slots__ = ("platform_key_extractor", "invocation_key_extractors", "initial_size_class_analyzer")
    PLATFORM_KEY_EXTRACTOR_FIELD_NUMBER: _ClassVar[int]
    INVOCATION_KEY_EXTRACTORS_FIELD_NUMBER: _ClassVar[int]
    INITIAL_SIZE_CLASS_ANALYZER_FIELD_NUMBER: _ClassVar[int]
    platform_key_extractor: PlatformKeyExtractorConfiguration
    invocation_key_extractors: _containers.RepeatedCompositeFieldContainer[InvocationKeyExtractorConfiguration]
    initial_size_class_analyzer: InitialSizeClassAnalyzerConfiguration
    def __init__(self, platform_key_extractor: _Optional[_Union[PlatformKeyExtractorConfiguration, _Mapping]] = ..., invocation_key_extractors: _Optional[_Iterable[_Union[InvocationKeyExtractorConfiguration, _Mapping]]] = ..., initial_size_class_analyzer: _Optional[_Union[InitialSizeClassAnalyzerConfiguration, _Mapping]] = ...) -> None: ...

class DemultiplexingActionRouterConfiguration(_message.Message):
    __slots__ = ("platform_key_extractor", "backends", "default_action_router")
    class Backend(_message.Message):
        __slots__ = ("instance_name_prefix", "platform", "action_router")
        INSTANCE_NAME_PREFIX_FIELD_NUMBER: _ClassVar[int]
        PLATFORM_FIELD_NUMBER: _ClassVar[int]
        ACTION_ROUTER_FIELD_NUMBER: _ClassVar[int]
        instance_name_prefix: str
        platform: _remote_execution_pb2.Platform
        action_router: ActionRouterConfiguration
        def __init__(self, instance_name_prefix: _Optional[str] = ..., platform: _Optional[_Union[_remote_execution_pb2.Platform, _Mapping]] = ..., action_router: _Optional[_Union[ActionRouterConfiguration, _Mapping]] = ...) -> None: ...
    PLATFORM_KEY_EXTRACTOR_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_ACTION_ROUTER_FIELD_NUMBER: _ClassVar[int]
    platform_key_extractor: PlatformKeyExtractorConfiguration
    backends: _containers.RepeatedCompositeFieldContainer[DemultiplexingActionRouterConfiguration.Backend]
    default_action_router: ActionRouterConfiguration
    def __init__(self, platform_key_extractor: _Optional[_Union[PlatformKeyExtractorConfiguration, _Mapping]] = ..., backends: _Optional[_Iterable[_Union[DemultiplexingActionRouterConfiguration.Backend, _Mapping]]] = ..., default_action_router: _Optional[_Union[ActionRouterConfiguration, _Mapping]] = ...) -> None: ...

class PlatformKeyExtractorConfiguration(_message.Message):
    __slots__ = ("action", "action_and_command", "static")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    ACTION_AND_COMMAND_FIELD_NUMBER: _ClassVar[int]
    STATIC_FIELD_NUMBER: _ClassVar[int]
    action: _empty_pb2.Empty
    action_and_command: _empty_pb2.Empty
    static: _remote_execution_pb2.Platform
    def __init__(self, action: _Optional[_Union[_empty_pb2.Empty, _Mapping]] = ..., action_and_command: _Optional[_Union[_empty_pb2.Empty, _Mapping]] = ..., static: _Optional[_Union[_remote_execution_pb2.Platform, _Mapping]] = ...) -> None: ...

class InvocationKeyExtractorConfiguration(_message.Message):
    __slots__ = ("tool_invocation_id", "correlated_invocations_id", "authentication_metadata")
    TOOL_INVOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    CORRELATED_INVOCATIONS_ID_FIELD_NUMBER: _ClassVar[int]
    AUTHENTICATION_METADATA_FIELD_NUMBER: _ClassVar[int]
    tool_invocation_id: _empty_pb2.Empty
    correlated_invocations_id: _empty_pb2.Empty
    authentication_metadata: _empty_pb2.Empty
    def __init__(self, tool_invocation_id: _Optional[_Union[_empty_pb2.Empty, _Mapping]] = ..., correlated_invocations_id: _Optional[_Union[_empty_pb2.Empty, _Mapping]] = ..., authentication_metadata: _Optional[_Union[_empty_pb2.Empty, _Mapping]] = ...) -> None: ...

class InitialSizeClassAnalyzerConfiguration(_message.Message):
    __slots__ = ("default_execution_timeout", "maximum_execution_timeout", "feedback_driven")
    DEFAULT_EXECUTION_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    MAXIMUM_EXECUTION_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_DRIVEN_FIELD_NUMBER: _ClassVar[int]
    default_execution_timeout: _duration_pb2.Duration
    maximum_execution_timeout: _duration_pb2.Duration
    feedback_driven: InitialSizeClassFeedbackDrivenAnalyzerConfiguration
    def __init__(self, default_execution_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., maximum_execution_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., feedback_driven: _Optional[_Union[InitialSizeClassFeedbackDrivenAnalyzerConfiguration, _Mapping]] = ...) -> None: ...

class InitialSizeClassFeedbackDrivenAnalyzerConfiguration(_message.Message):
    __slots__ = ("failure_cache_duration", "history_size", "page_rank")
    FAILURE_CACHE_DURATION_FIELD_NUMBER: _ClassVar[int]
    HISTORY_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_RANK_FIELD_NUMBER: _ClassVar[int]
    failure_cache_duration: _duration_pb2.Duration
    history_size: int
    page_rank: InitialSizeClassPageRankStrategyCalculatorConfiguration
    def __init__(self, failure_cache_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., history_size: _Optional[int] = ..., page_rank: _Optional[_Union[InitialSizeClassPageRankStrategyCalculatorConfiguration, _Mapping]] = ...) -> None: ...

class InitialSizeClassPageRankStrategyCalculatorConfiguration(_message.Message):
    __slots__ = ("acceptable_execution_time_increase_exponent", "smaller_size_class_execution_timeout_multiplier", "minimum_execution_timeout", "maximum_convergence_error")
    ACCEPTABLE_EXECUTION_TIME_INCREASE_EXPONENT_FIELD_NUMBER: _ClassVar[int]
    SMALLER_SIZE_CLASS_EXECUTION_TIMEOUT_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    MINIMUM_EXECUTION_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    MAXIMUM_CONVERGENCE_ERROR_FIELD_NUMBER: _ClassVar[int]
    acceptable_execution_time_increase_exponent: float
    smaller_size_class_execution_timeout_multiplier: float
    minimum_execution_timeout: _duration_pb2.Duration
    maximum_convergence_error: float
    def __init__(self, acceptable_execution_time_increase_exponent: _Optional[float] = ..., smaller_size_class_execution_timeout_multiplier: _Optional[float] = ..., minimum_execution_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., maximum_convergence_error: _Optional[float] = ...) -> None: ...
