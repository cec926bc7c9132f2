#!/usr/bin/env bash
# Regenerates the uplink's Python stubs from src/krypton/uplink/v1/uplink.proto:
#   uplink_pb2.py, uplink_pb2_grpc.py       (grpcio-tools)
#   uplink_pb2.pyi, uplink_pb2_grpc.pyi     (mypy-protobuf, so callers stay mypy --strict)
# Run from anywhere: `make proto` or `scripts/gen_proto.sh`. Needs the test extras
# (`pip install -e '.[test]'`): grpcio-tools and mypy-protobuf.
#
# The proto is compiled with `-I src`, so protoc sees it as krypton/uplink/v1/uplink.proto
# and the generated code imports its sibling as `from krypton.uplink.v1 import uplink_pb2`
# (grpc_tools' default, a bare `import uplink_pb2`, would not import inside the package).
# The check at the end fails loudly if that ever regresses.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${VENV:-.venv}"
python="${PYTHON:-$venv/bin/python}"
bin="$(dirname "$python")"
out="src/krypton/uplink/v1"
proto="krypton/uplink/v1/uplink.proto"

for tool in protoc-gen-mypy protoc-gen-mypy_grpc; do
    test -x "$bin/$tool" || { echo "gen_proto: $bin/$tool not found; pip install -e '.[test]'" >&2; exit 1; }
done

rm -f "$out"/uplink_pb2.py "$out"/uplink_pb2.pyi "$out"/uplink_pb2_grpc.py "$out"/uplink_pb2_grpc.pyi
"$python" -m grpc_tools.protoc \
    -I src \
    --plugin=protoc-gen-mypy="$bin/protoc-gen-mypy" \
    --plugin=protoc-gen-mypy_grpc="$bin/protoc-gen-mypy_grpc" \
    --python_out=src \
    --grpc_python_out=src \
    --mypy_out=src \
    --mypy_grpc_out=src \
    "src/$proto"
test -f "$out/__init__.py" || printf '"""Generated uplink stubs (scripts/gen_proto.sh)."""\n' > "$out/__init__.py"

# Any bare sibling import left by a future grpc_tools is rewritten to the package path.
sed -i -E 's/^import (uplink_pb2[a-z_]*) as /from krypton.uplink.v1 import \1 as /' \
    "$out"/uplink_pb2_grpc.py "$out"/uplink_pb2_grpc.pyi "$out"/uplink_pb2.pyi

PYTHONPATH=src "$python" - <<'PY'
from krypton.uplink.v1 import uplink_pb2, uplink_pb2_grpc

assert uplink_pb2.DESCRIPTOR.package == "krypton.uplink.v1"
assert uplink_pb2_grpc.UplinkStub and uplink_pb2_grpc.add_UplinkServicer_to_server
print("gen_proto: krypton.uplink.v1 stubs generated and importable")
PY
