#!/usr/bin/env bash
# Regenerate the committed Python gRPC stubs of the Open Inference Protocol (KServe V2):
#   proto/inference/grpc_predict_v2.proto
#     -> service/grpc/gen_inference/grpc_predict_v2_pb2{.py,.pyi,_grpc.py}
# protoc writes `from inference import grpc_predict_v2_pb2`; the import is
# rewritten to a relative one so that it resolves inside the package. The
# output depends only on the .proto file and the grpcio-tools version, so
# running this twice changes nothing. Needs grpcio-tools (the dev extra).
#
# The generated modules put the `inference.*` messages in protobuf's default
# descriptor pool, as tritonclient.grpc does with its own copy: never import
# both into one process (protobuf refuses the duplicate symbols).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ -x .venv/bin/python ]]; then
    PY=.venv/bin/python
else
    PY=python3
fi
OUT=service/grpc/gen_inference
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

"$PY" -m grpc_tools.protoc -I proto \
    --python_out="$TMP" --pyi_out="$TMP" --grpc_python_out="$TMP" \
    proto/inference/grpc_predict_v2.proto

mkdir -p "$OUT"
for f in grpc_predict_v2_pb2.py grpc_predict_v2_pb2.pyi grpc_predict_v2_pb2_grpc.py; do
    sed -e 's/^from inference import grpc_predict_v2_pb2 as /from . import grpc_predict_v2_pb2 as /' \
        "$TMP/inference/$f" > "$OUT/$f"
done
if grep -n '^from inference\b\|^import inference\b' "$OUT"/grpc_predict_v2_pb2*.py*; then
    echo "gen-inference-protos: an absolute import of the inference package survived" >&2
    exit 1
fi
[[ -f "$OUT/__init__.py" ]] || printf '"""Generated Open Inference Protocol stubs; regenerate with scripts/gen-inference-protos.sh, never edit by hand."""\n' > "$OUT/__init__.py"
echo "gen-inference-protos: wrote $OUT/grpc_predict_v2_pb2.py, .pyi, _grpc.py ($("$PY" -c 'import importlib.metadata as m; print("grpcio-tools", m.version("grpcio-tools"))'))"
