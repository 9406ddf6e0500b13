#!/usr/bin/env bash
# Regenerate the committed Python gRPC stubs:
#   proto/genserve/v1/genserve.proto        -> service/grpc/gen/genserve_pb2{.py,.pyi,_grpc.py}
#   proto/inference/grpc_predict_v2.proto   -> service/grpc/gen_inference/grpc_predict_v2_pb2{.py,.pyi,_grpc.py}
# protoc writes absolute imports (`from genserve.v1 import genserve_pb2`, which
# would resolve to our top-level `genserve` package); they are rewritten to
# relative ones. The output depends only on the .proto files and the
# grpcio-tools version, so running this twice changes nothing. Needs
# grpcio-tools (the dev extra).
#
# The inference stubs put the `inference.*` messages in protobuf's default
# descriptor pool, as tritonclient.grpc does with its own copy: never import
# both into one process (protobuf refuses the duplicate symbols).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=python3
[[ -x .venv/bin/python ]] && PY=.venv/bin/python
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# generate PROTO_DIR STEM OUT: proto/PROTO_DIR/STEM.proto -> OUT/STEM_pb2{.py,.pyi,_grpc.py}
generate() {
    local dir=$1 stem=$2 out=$3 package=${1//\//.}
    "$PY" -m grpc_tools.protoc -I proto \
        --python_out="$TMP" --pyi_out="$TMP" --grpc_python_out="$TMP" "proto/$dir/$stem.proto"
    mkdir -p "$out"
    for f in "${stem}_pb2.py" "${stem}_pb2.pyi" "${stem}_pb2_grpc.py"; do
        sed -e "s/^from ${package//./\\.} import ${stem}_pb2 as /from . import ${stem}_pb2 as /" \
            "$TMP/$dir/$f" > "$out/$f"
    done
    if grep -n "^from ${dir%%/*}\b\|^import ${dir%%/*}\b" "$out/${stem}"_pb2*.py*; then
        echo "gen-protos: an absolute import of ${dir%%/*} survived in $out" >&2
        exit 1
    fi
    [[ -f "$out/__init__.py" ]] ||
        printf '"""Generated gRPC stubs; regenerate with scripts/gen-protos.sh, never edit by hand."""\n' > "$out/__init__.py"
    echo "gen-protos: wrote $out/${stem}_pb2.py, .pyi, _grpc.py"
}

generate genserve/v1 genserve service/grpc/gen
generate inference grpc_predict_v2 service/grpc/gen_inference
"$PY" -c 'import importlib.metadata as m; print("gen-protos: grpcio-tools", m.version("grpcio-tools"))'
