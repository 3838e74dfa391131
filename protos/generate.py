"""Regenerate the Python code of the contract: `python protos/generate.py`.

Writes `*_pb2.py`, `*_pb2.pyi` and `*_pb2_grpc.py` beside the `.proto` files in
`protos/settlesim/v1/`, which install as the `settlesim.v1` package.
`--check` regenerates into a scratch folder and exits 1 if the committed files
differ (CI runs it through tests/test_generated_code.py).
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PACKAGE_DIR = PROTO_ROOT / "settlesim" / "v1"


def generate(out_root: Path) -> list[Path]:
    from grpc_tools import protoc

    well_known = str(resources.files("grpc_tools") / "_proto")
    protos = sorted(PACKAGE_DIR.glob("*.proto"))
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *[str(p) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted((out_root / "settlesim" / "v1").glob("*_pb2*.py*"))


def stale_files() -> list[str]:
    """Names of generated files that differ from what protoc makes now."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        committed = {p.name for p in PACKAGE_DIR.glob("*_pb2*.py*")}
        stale = [
            p.name
            for p in fresh
            if not (PACKAGE_DIR / p.name).exists() or not filecmp.cmp(p, PACKAGE_DIR / p.name, shallow=False)
        ]
        stale += sorted(committed - {p.name for p in fresh})
        return stale


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if committed code is stale")
    args = parser.parse_args()
    if args.check:
        stale = stale_files()
        if stale:
            print("stale generated code: " + ", ".join(stale) + "; run python protos/generate.py")
            return 1
        print("generated code is up to date")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        for path in generate(Path(tmp)):
            shutil.copyfile(path, PACKAGE_DIR / path.name)
            print(f"wrote {PACKAGE_DIR / path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
