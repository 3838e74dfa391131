from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class DescribePlatformRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DescribePlatformResponse(_message.Message):
    __slots__ = ("world_name", "world_digest", "version")
    WORLD_NAME_FIELD_NUMBER: _ClassVar[int]
    WORLD_DIGEST_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    world_name: str
    world_digest: str
    version: str
    def __init__(self, world_name: _Optional[str] = ..., world_digest: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...
