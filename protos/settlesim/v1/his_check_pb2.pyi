from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TargetedFault(_message.Message):
    __slots__ = ("rpc", "nth", "from_nth", "kind", "delay_ms", "figures_off_fen")
    RPC_FIELD_NUMBER: _ClassVar[int]
    NTH_FIELD_NUMBER: _ClassVar[int]
    FROM_NTH_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    FIGURES_OFF_FEN_FIELD_NUMBER: _ClassVar[int]
    rpc: str
    nth: _containers.RepeatedScalarFieldContainer[int]
    from_nth: int
    kind: str
    delay_ms: int
    figures_off_fen: int
    def __init__(self, rpc: _Optional[str] = ..., nth: _Optional[_Iterable[int]] = ..., from_nth: _Optional[int] = ..., kind: _Optional[str] = ..., delay_ms: _Optional[int] = ..., figures_off_fen: _Optional[int] = ...) -> None: ...

class OpenRunRequest(_message.Message):
    __slots__ = ("institution_code", "scenario", "faults", "timeout_s")
    INSTITUTION_CODE_FIELD_NUMBER: _ClassVar[int]
    SCENARIO_FIELD_NUMBER: _ClassVar[int]
    FAULTS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    institution_code: str
    scenario: str
    faults: _containers.RepeatedCompositeFieldContainer[TargetedFault]
    timeout_s: int
    def __init__(self, institution_code: _Optional[str] = ..., scenario: _Optional[str] = ..., faults: _Optional[_Iterable[_Union[TargetedFault, _Mapping]]] = ..., timeout_s: _Optional[int] = ...) -> None: ...

class Run(_message.Message):
    __slots__ = ("run_id", "institution_code", "scenario", "session", "opened_at", "expires_at", "closed_at", "faults")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    INSTITUTION_CODE_FIELD_NUMBER: _ClassVar[int]
    SCENARIO_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    OPENED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    CLOSED_AT_FIELD_NUMBER: _ClassVar[int]
    FAULTS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    institution_code: str
    scenario: str
    session: str
    opened_at: str
    expires_at: str
    closed_at: str
    faults: _containers.RepeatedCompositeFieldContainer[TargetedFault]
    def __init__(self, run_id: _Optional[str] = ..., institution_code: _Optional[str] = ..., scenario: _Optional[str] = ..., session: _Optional[str] = ..., opened_at: _Optional[str] = ..., expires_at: _Optional[str] = ..., closed_at: _Optional[str] = ..., faults: _Optional[_Iterable[_Union[TargetedFault, _Mapping]]] = ...) -> None: ...

class OpenRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: Run
    def __init__(self, run: _Optional[_Union[Run, _Mapping]] = ...) -> None: ...

class GetRunRecordRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class GetRunRecordResponse(_message.Message):
    __slots__ = ("run", "entries_json", "settlements_json", "catalog_codes", "lost_entries")
    RUN_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_JSON_FIELD_NUMBER: _ClassVar[int]
    SETTLEMENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    CATALOG_CODES_FIELD_NUMBER: _ClassVar[int]
    LOST_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    run: Run
    entries_json: _containers.RepeatedScalarFieldContainer[str]
    settlements_json: _containers.RepeatedScalarFieldContainer[str]
    catalog_codes: _containers.RepeatedScalarFieldContainer[str]
    lost_entries: int
    def __init__(self, run: _Optional[_Union[Run, _Mapping]] = ..., entries_json: _Optional[_Iterable[str]] = ..., settlements_json: _Optional[_Iterable[str]] = ..., catalog_codes: _Optional[_Iterable[str]] = ..., lost_entries: _Optional[int] = ...) -> None: ...

class CloseRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class CloseRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: Run
    def __init__(self, run: _Optional[_Union[Run, _Mapping]] = ...) -> None: ...
