#!/usr/bin/env bash
# Regenerate the committed Python gRPC stubs of the genserve API:
#   proto/genserve/v1/genserve.proto -> service/grpc/gen/genserve_pb2{.py,.pyi,_grpc.py}
# protoc writes `from genserve.v1 import genserve_pb2`, which would resolve to
# our top-level `genserve` package; the import is rewritten to a relative one.
# The output depends only on the .proto files and the grpcio-tools version, so
# running this twice changes nothing. Needs grpcio-tools (the dev extra).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ -x .venv/bin/python ]]; then
    PY=.venv/bin/python
else
    PY=python3
fi
OUT=service/grpc/gen
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

"$PY" -m grpc_tools.protoc -I proto \
    --python_out="$TMP" --pyi_out="$TMP" --grpc_python_out="$TMP" \
    proto/genserve/v1/genserve.proto

mkdir -p "$OUT"
for f in genserve_pb2.py genserve_pb2.pyi genserve_pb2_grpc.py; do
    sed -e 's/^from genserve\.v1 import genserve_pb2 as /from . import genserve_pb2 as /' \
        "$TMP/genserve/v1/$f" > "$OUT/$f"
done
if grep -n '^from genserve\b\|^import genserve\b' "$OUT"/genserve_pb2*.py*; then
    echo "gen-protos: an import of the top-level genserve package survived" >&2
    exit 1
fi
[[ -f "$OUT/__init__.py" ]] || printf '"""Generated gRPC stubs; regenerate with scripts/gen-protos.sh, never edit by hand."""\n' > "$OUT/__init__.py"
echo "gen-protos: wrote $OUT/genserve_pb2.py, genserve_pb2.pyi, genserve_pb2_grpc.py ($("$PY" -c 'import grpc_tools, importlib.metadata as m; print("grpcio-tools", m.version("grpcio-tools"))'))"
