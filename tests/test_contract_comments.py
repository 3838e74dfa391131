"""Every field and RPC of the contract carries a comment.

The comments are the mapping a hospital software vendor follows: each names the
national counterpart (medfee_sumamt, setl_id, msgid...) or says "settlesim
extension; no national field". protoc's source info tells which elements have a
leading or trailing comment; a detached comment (separated by a blank line) does
not count.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "protos"

# Paths in SourceCodeInfo: field numbers of FileDescriptorProto and friends.
_FILE_MESSAGE, _FILE_SERVICE = 4, 6
_MESSAGE_FIELD, _MESSAGE_NESTED = 2, 3
_SERVICE_METHOD = 2


def descriptor_set(proto_root: Path, out_dir: Path) -> descriptor_pb2.FileDescriptorSet:
    """Compiles every .proto under proto_root, keeping comments."""
    from grpc_tools import protoc

    protos = sorted(proto_root.rglob("*.proto"))
    assert protos, f"no .proto files under {proto_root}"
    out = out_dir / "contract.pb"
    args = [
        "protoc",
        f"-I{proto_root}",
        f"-I{resources.files('grpc_tools') / '_proto'}",
        "--include_source_info",
        f"--descriptor_set_out={out}",
        *[str(p) for p in protos],
    ]
    assert protoc.main(args) == 0, "protoc failed"
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def uncommented(files: descriptor_pb2.FileDescriptorSet) -> list[str]:
    """'file:line full.name' of every message field and RPC with no leading or
    trailing comment."""
    missing: list[str] = []
    for f in files.file:
        locations = {tuple(loc.path): loc for loc in f.source_code_info.location}

        def check(path: tuple[int, ...], name: str, f=f, locations=locations) -> None:
            loc = locations.get(path)
            if loc is None or not (loc.leading_comments.strip() or loc.trailing_comments.strip()):
                line = loc.span[0] + 1 if loc is not None else 0
                missing.append(f"{f.name}:{line} {name}")

        def walk(message: descriptor_pb2.DescriptorProto, path: tuple[int, ...], prefix: str) -> None:
            if message.options.map_entry:  # synthetic, written as map<K, V>
                return
            full = f"{prefix}.{message.name}"
            for i, field in enumerate(message.field):
                check((*path, _MESSAGE_FIELD, i), f"{full}.{field.name}")
            for i, nested in enumerate(message.nested_type):
                walk(nested, (*path, _MESSAGE_NESTED, i), full)

        for i, message in enumerate(f.message_type):
            walk(message, (_FILE_MESSAGE, i), f.package)
        for i, service in enumerate(f.service):
            for j, method in enumerate(service.method):
                check((_FILE_SERVICE, i, _SERVICE_METHOD, j), f"{f.package}.{service.name}.{method.name}")
    return missing


def test_every_field_and_rpc_has_a_comment(tmp_path):
    missing = uncommented(descriptor_set(PROTO_ROOT, tmp_path))
    assert not missing, (
        "fields/RPCs without a comment naming their national counterpart (or saying "
        '"settlesim extension; no national field"):\n  ' + "\n  ".join(missing)
    )


def test_the_check_finds_what_lacks_a_comment(tmp_path):
    root = tmp_path / "protos"
    (root / "demo").mkdir(parents=True)
    (root / "demo" / "demo.proto").write_text(
        """syntax = "proto3";
package demo;

service Demo {
  // Commented.
  rpc Good(Outer) returns (Outer);
  rpc Bare(Outer) returns (Outer);
}

message Outer {
  // medfee_sumamt.
  int64 leading = 1;
  int64 trailing = 2;  // fund_pay_sumamt.
  int64 bare = 3;

  // Detached by a blank line: does not count.

  int64 detached = 4;
  //
  int64 empty_comment = 5;
  message Inner {
    string nested_bare = 1;
    // setl_id.
    string nested_ok = 2;
  }
  // settlesim extension; no national field.
  map<string, Inner> by_key = 6;
}
""",
        encoding="utf-8",
    )
    out = tmp_path / "out"
    out.mkdir()
    missing = uncommented(descriptor_set(root, out))
    assert missing == [
        "demo/demo.proto:14 demo.Outer.bare",
        "demo/demo.proto:18 demo.Outer.detached",
        "demo/demo.proto:20 demo.Outer.empty_comment",
        "demo/demo.proto:22 demo.Outer.Inner.nested_bare",
        "demo/demo.proto:7 demo.Demo.Bare",
    ]
