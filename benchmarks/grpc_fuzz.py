"""gRPC fuzzing: hypothesis-generated requests for every unary method of genserve.v1.Genserve and of
inference.GRPCInferenceService (KServe V2), against a real `genserve serve`; REST has benchmarks/fuzz.py.

Starts `genserve serve` on free ports of 127.0.0.1 over the model store (default models/; `--only` serves a reduced
copy of it, made of links) and always stops it. Requests are drawn from each method's protobuf DESCRIPTOR: integers
of the field's type (extremes and negatives included), floats (nan, inf, huge), strings (empty, unicode, long),
bytes, repeated fields of 0..3 items, maps, nested messages and oneofs. Half the cases name a model the server holds
(from ListModels and RepositoryIndex) with the tensor names of its metadata (GetModel, ModelMetadata) and often a
well-formed tensor of its shape, so cases get past NOT_FOUND. Each call has a timeout; DEADLINE_EXCEEDED is
recorded as a possible hang. Prints (markdown) the cases by method and status code and every INTERNAL, UNKNOWN or
DEADLINE_EXCEEDED with its request (text format, truncated) and details, then whether the server still answers
health SERVING. Exits non-zero if any such status was seen, the server's log holds a traceback, or the server did
not survive.

    .venv/bin/python benchmarks/grpc_fuzz.py [--max-cases 3000] [--max-time 600] [--out grpc_fuzz.md]
    .venv/bin/python benchmarks/grpc_fuzz.py --only pixelcnn,vae --max-cases 300 --max-time 60   # quick
"""

import argparse
import io
import math
import shutil
import sys
import tempfile
import time
import warnings
import wave
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from google.protobuf import text_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from servers import REPO, free_port, reduced_store, revision, start_server, stop, wait_ready

from service.grpc.gen import genserve_pb2 as v1
from service.grpc.gen_inference import grpc_predict_v2_pb2 as v2

SERVICES = [v1.DESCRIPTOR.services_by_name["Genserve"], v2.DESCRIPTOR.services_by_name["GRPCInferenceService"]]
BAD = ("INTERNAL", "UNKNOWN", "DEADLINE_EXCEEDED")  # a server error, or a possible hang
CAPABILITY = {"Reconstruct": "encode", "Interpolate": "encode"}  # the capability a method needs, if not its name
MODEL_FIELD = {"model", "name", "model_name"}  # the field of a request that names the model
F = FieldDescriptor
INT_RANGES = {
    F.TYPE_INT32: (-2**31, 2**31 - 1), F.TYPE_SINT32: (-2**31, 2**31 - 1), F.TYPE_SFIXED32: (-2**31, 2**31 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1), F.TYPE_FIXED32: (0, 2**32 - 1),
    F.TYPE_INT64: (-2**63, 2**63 - 1), F.TYPE_SINT64: (-2**63, 2**63 - 1), F.TYPE_SFIXED64: (-2**63, 2**63 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1), F.TYPE_FIXED64: (0, 2**64 - 1),
}
V1_DTYPES = ["uint8", "int64", "int32", "float32", "float64", "float16", "bool", "int8", "uint64", "complex64"]
V2_NUMPY = {"BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
            "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64", "FP16": "float16",
            "FP32": "float32", "FP64": "float64"}
V2_CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
               "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
               "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
               "FP64": "fp64_contents"}
ROWS = st.sampled_from([1, 1, 2, 3, 0])  # a tensor's first dimension
FILLS = ["levels", "levels", "levels", "zeros", "top", "negative", "huge", "nan", "inf"]
# Values that name things the server knows whatever the model (or that it is likely to check by name).
COMMON_HINTS = {
    "dtype": st.sampled_from(V1_DTYPES), "datatype": st.sampled_from(sorted(V2_NUMPY) + ["BYTES"]),
    "method": st.sampled_from(["exact", "elbo", "iwae", "critic", "ais"]),
    "anomaly_method": st.sampled_from(["nll", "typical_nll", "complexity", "class", "reconstruction", "typicality",
                                       "likelihood_ratio", "mix:nll+complexity", "states:nll+complexity"]),
    "refine": st.sampled_from(["gradient", "learned"]), "direction": st.sampled_from(["a_to_b", "b_to_a"]),
    "model_version": st.sampled_from(["1", "0", "2"]), "version": st.sampled_from(["1", "0", "2"]),
    "chords": st.lists(st.sampled_from(["C", "Am", "N", "G7"]), max_size=4),
}


# --- strategies from descriptors ------------------------------------------------------------------------------------


def integers(lo: int, hi: int) -> st.SearchStrategy[int]:
    edges = sorted({v for v in (lo, hi, -(2**31), 2**31 - 1, 2**63 - 1, -1, 0, 1, 2, 64, 65, 256) if lo <= v <= hi})
    return st.one_of(st.sampled_from(edges), st.integers(max(lo, -2), min(hi, 8)), st.integers(lo, hi))


def floats(width: int) -> st.SearchStrategy[float]:
    big = 3.4e38 if width == 32 else 1.7e308
    edges = [math.nan, math.inf, -math.inf, 0.0, -0.0, 1.0, -1.0, 1e-30, 1e-31, 1e-45, big, -big, 11.0]
    return st.one_of(st.sampled_from(edges), st.floats(-4, 12, width=width), st.floats(width=width))


def texts() -> st.SearchStrategy[str]:
    return st.one_of(st.just(""), st.text(max_size=8), st.text(alphabet="abc ,.\n", max_size=40),
                     st.sampled_from(["é", "😀", "\x00", "日本語"]),
                     st.sampled_from([70_000, 1_000_000]).map("x".__mul__))  # long, with a short repr


def scalar(f: FieldDescriptor) -> st.SearchStrategy:
    if f.type in INT_RANGES:
        return integers(*INT_RANGES[f.type])
    if f.type in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        return floats(64 if f.type == F.TYPE_DOUBLE else 32)
    if f.type == F.TYPE_BOOL:
        return st.booleans()
    if f.type == F.TYPE_STRING:
        return texts()
    if f.type == F.TYPE_BYTES:
        return st.one_of(st.binary(max_size=16), st.binary(min_size=100, max_size=3000))
    if f.type == F.TYPE_ENUM:
        return st.one_of(st.sampled_from([v.number for v in f.enum_type.values]), integers(-2**31, 2**31 - 1))
    raise TypeError(f"no strategy for field {f.full_name}")


def is_map(f: FieldDescriptor) -> bool:
    return f.type == F.TYPE_MESSAGE and f.message_type.GetOptions().map_entry


def hint_of(f: FieldDescriptor, hints: dict) -> st.SearchStrategy | None:
    """The hint for `f` (by "Message.field", then field name, then message type), or None."""
    hint = hints.get(f"{f.containing_type.name}.{f.name}", hints.get(f.name))
    return hint if hint is not None or f.type != F.TYPE_MESSAGE else hints.get(f.message_type.name)


def value(f: FieldDescriptor, hints: dict, depth: int) -> st.SearchStrategy:
    """One value (not a list) of field `f`: half the time a hint (real name, well-formed tensor) if there is one."""
    generic = message(f.message_type, hints, depth + 1) if f.type == F.TYPE_MESSAGE else scalar(f)
    hint = hint_of(f, hints)
    return generic if hint is None else st.one_of(hint, generic)


def field_strategy(f: FieldDescriptor, hints: dict, depth: int) -> st.SearchStrategy:
    if is_map(f):
        key, val = f.message_type.fields_by_name["key"], f.message_type.fields_by_name["value"]
        return st.dictionaries(value(key, hints, depth), value(val, hints, depth), max_size=3)
    if f.is_repeated:
        if f.type != F.TYPE_MESSAGE and hint_of(f, hints) is not None:  # a hint is a whole list (labels)
            return st.one_of(hint_of(f, hints), st.lists(scalar(f), max_size=3))
        return st.lists(value(f, hints, depth), max_size=3)
    return value(f, hints, depth)


def message(descriptor, hints: dict, depth: int = 0) -> st.SearchStrategy:
    """Messages of `descriptor` with any subset of their fields set (a oneof: the last one set wins)."""
    if depth > 3:
        return st.builds(GetMessageClass(descriptor))
    fields = {f.name: field_strategy(f, hints, depth) for f in descriptor.fields}
    return st.fixed_dictionaries({}, optional=fields).map(lambda values: build(descriptor, values))


def focused(descriptor, hints: dict) -> st.SearchStrategy:
    """Messages with only hinted fields (from their hints; every hinted tensor) and at most one other field."""
    hinted = {f.name: hint_of(f, hints) for f in descriptor.fields if hint_of(f, hints) is not None}
    tensors = {name: hint for name, hint in hinted.items() if descriptor.fields_by_name[name].type == F.TYPE_MESSAGE}
    others = {name: hint for name, hint in hinted.items() if name not in tensors}
    one = st.sampled_from(list(descriptor.fields)).flatmap(
        lambda f: field_strategy(f, hints, 1).map(lambda v: {f.name: v}))
    return st.tuples(st.fixed_dictionaries(tensors, optional=others), st.one_of(st.just({}), one)).map(
        lambda both: build(descriptor, both[0] | both[1]))


def build(descriptor, values: dict):
    msg = GetMessageClass(descriptor)()
    for name, v in values.items():
        f = descriptor.fields_by_name[name]
        if is_map(f):
            for key, item in v.items():
                if isinstance(item, (int, float, str, bytes)):
                    getattr(msg, name)[key] = item
                else:
                    getattr(msg, name)[key].CopyFrom(item)
        elif f.is_repeated:
            getattr(msg, name).extend(v)
        elif f.type == F.TYPE_MESSAGE:
            getattr(msg, name).CopyFrom(v)
        else:
            setattr(msg, name, v)
    return msg


# --- well-formed tensors of a model's shapes ------------------------------------------------------------------------


def fill(mode: str, count: int, levels: int, rng: np.random.Generator) -> np.ndarray:
    """`count` values: mostly valid levels, else zeros, the top level, -1, huge, nan or inf."""
    special = {"zeros": 0.0, "top": levels - 1, "negative": -1.0, "huge": 1e30, "nan": math.nan, "inf": math.inf}
    if mode == "levels":
        return rng.integers(0, max(levels, 1), count).astype(np.float64)
    return np.full(count, special[mode], dtype=np.float64)


def cast(values: np.ndarray, dtype: str) -> np.ndarray:
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return values.astype(dtype)


def v1_tensor(shape: list[int], levels: int) -> st.SearchStrategy:
    """A genserve.v1 Tensor [rows, *shape] whose data has the length its dtype and shape say."""
    def make(dtype, rows, mode, rng_seed):
        dims = [rows, *shape]
        data = cast(fill(mode, int(np.prod(dims)), levels, np.random.default_rng(rng_seed)), dtype)
        return v1.Tensor(dtype=dtype, shape=dims, data=data.astype(data.dtype.newbyteorder("<")).tobytes())
    return st.builds(make, st.sampled_from(V1_DTYPES[:3] * 3 + V1_DTYPES), st.integers(0, 3),
                     st.sampled_from(FILLS), st.integers(0, 2**32 - 1))


def latents() -> st.SearchStrategy:
    """Decode's z: float32 [rows, D] for a D that some model may have."""
    def make(rows, dim, mode, rng_seed):
        z = cast(fill(mode, rows * dim, 3, np.random.default_rng(rng_seed)) - 1.0, "<f4")
        return v1.Tensor(dtype="float32", shape=[rows, dim], data=z.tobytes())
    return st.builds(make, st.integers(0, 3), st.sampled_from([2, 8, 10, 16, 20, 32, 50, 64, 100]),
                     st.sampled_from(FILLS), st.integers(0, 2**32 - 1))


def v2_request(name: str, meta, levels: int) -> st.SearchStrategy:
    """A ModelInferRequest with every input of `meta` (ModelMetadataResponse): typed contents or raw, any rows."""
    def make(rows, raw, mode, rng_seed, outputs):
        rng = np.random.default_rng(rng_seed)
        request = v2.ModelInferRequest(model_name=name, outputs=[{"name": o.name} for o in meta.outputs[:outputs]])
        for spec in meta.inputs:
            shape = [rows if d < 0 else d for d in spec.shape]
            values = cast(fill(mode, int(np.prod(shape)), levels, rng), V2_NUMPY.get(spec.datatype, "float32"))
            tensor = request.inputs.add(name=spec.name, datatype=spec.datatype, shape=shape)
            if raw or spec.datatype not in V2_CONTENTS:
                request.raw_input_contents.append(values.astype(values.dtype.newbyteorder("<")).tobytes())
            else:
                getattr(tensor.contents, V2_CONTENTS[spec.datatype]).extend(values.tolist())
        return request
    return st.builds(make, ROWS, st.booleans(), st.sampled_from(FILLS), st.integers(0, 2**32 - 1),
                     st.integers(0, 2))


# --- what the server holds ------------------------------------------------------------------------------------------


@dataclass
class Served:
    v1: dict = field(default_factory=dict)  # model -> ModelInfo
    v2: dict = field(default_factory=dict)  # V2 model -> ModelMetadataResponse


def served(call) -> Served:
    out = Served()
    for info in call("ListModels", v1.ListModelsRequest()).models:
        out.v1[info.name] = call("GetModel", v1.GetModelRequest(model=info.name))
    for name in sorted({m.name for m in call("RepositoryIndex", v2.RepositoryIndexRequest()).models}):
        out.v2[name] = call("ModelMetadata", v2.ModelMetadataRequest(name=name))
    return out


def levels_of(info) -> int:
    return info.data.levels if info.data.HasField("levels") else 256


def wavs(sample_rate: int) -> st.SearchStrategy:
    """Lists of short 16-bit mono WAV files at `sample_rate` (sometimes another rate)."""
    def make(rate, frames, rng_seed):
        out = io.BytesIO()
        with wave.open(out, "wb") as w:
            w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate)
            w.writeframes(np.random.default_rng(rng_seed).integers(-2**15, 2**15, frames, dtype="<i2").tobytes())
        return out.getvalue()
    wav = st.builds(make, st.sampled_from([sample_rate, sample_rate, 8000]), st.sampled_from([1, 100, 4000, 0]),
                    st.integers(0, 2**32 - 1))
    return st.lists(wav, min_size=1, max_size=3)


def v1_hints(info) -> dict:
    classes = list(info.data.classes)
    hints = {"n": st.integers(1, 3),
             "label": st.integers(-1, max(len(classes), 1)),
             "labels": st.lists(st.integers(-1, max(len(classes), 1)), max_size=3),
             "length": st.integers(1, 20), "steps": st.integers(1, 4), "k": st.integers(1, 4),
             "temperature": st.floats(0.1, 2.0), "seconds": st.floats(0.001, 0.1),
             "DecodeRequest.z": latents()}
    if info.data.kind not in ("text", "audio"):  # those take texts and wavs, not inputs
        hints["inputs"] = v1_tensor(list(info.data.shape), levels_of(info))
        hints["CompleteRequest.mask"] = v1_tensor(list(info.data.shape), 2)
    else:
        hints["texts"] = st.lists(st.text(alphabet="abcdefgh .", min_size=1, max_size=20), min_size=1, max_size=3)
    if info.data.kind == "audio":
        hints["wavs"] = wavs(info.data.sample_rate or 16000)
    if classes:
        hints["voice"] = st.sampled_from(classes)
    return COMMON_HINTS | hints


def v2_hints(meta) -> dict:
    hints = dict(COMMON_HINTS)
    if meta.inputs:
        hints["InferInputTensor.name"] = st.sampled_from([t.name for t in meta.inputs])
    if meta.outputs:
        hints["InferRequestedOutputTensor.name"] = st.sampled_from([t.name for t in meta.outputs])
    if meta.versions:
        hints["model_version"] = hints["version"] = st.sampled_from(list(meta.versions))
    return hints


def named(msg, model_field: str, name: str):
    setattr(msg, model_field, name)
    return msg


def for_model(method, name: str, known: Served) -> st.SearchStrategy:
    """Requests naming served model `name`, with its names and shapes as hints, some with only those set."""
    descriptor, model_field = method.input_type, model_field_of(method.input_type)
    hints = v1_hints(known.v1[name]) if name in known.v1 else v2_hints(known.v2[name])
    strategies = [message(descriptor, hints), focused(descriptor, hints)]
    if descriptor.name == "ModelInferRequest":
        base = known.v1.get(name.split(".")[0])
        strategies.append(v2_request(name, known.v2[name], levels_of(base) if base else 256))
    return st.one_of(strategies).map(lambda msg: named(msg, model_field, name))


def model_field_of(descriptor) -> str | None:
    return next((f.name for f in descriptor.fields if f.name in MODEL_FIELD), None)


def requests(method, known: Served) -> list[st.SearchStrategy]:
    """Generic requests and, for a method that names a model, requests for a served model (one with the method's
    capability more often); each gets an equal share of the method's cases."""
    generic = message(method.input_type, COMMON_HINTS)
    models = list(known.v1 if method.containing_service.name == "Genserve" else known.v2)
    if model_field_of(method.input_type) is None or not models:
        return [generic]
    capability = CAPABILITY.get(method.name, method.name.lower())
    capable = [m for m in models if m in known.v1 and capability in known.v1[m].capabilities]
    return [generic, st.sampled_from(models + capable * 2).flatmap(lambda m: for_model(method, m, known))]


# --- calling and recording ------------------------------------------------------------------------------------------


@dataclass
class Record:
    codes: dict = field(default_factory=dict)  # method -> Counter of status names
    failures: list = field(default_factory=list)  # (method, code, details, request text)
    kept: list = field(default_factory=list)  # (method, serialized request) of every failure


def caller(channel: grpc.Channel, timeout_s: float):
    """call(method name, request) -> response or grpc.RpcError, for any unary method of SERVICES."""
    methods = {m.name: (s, m) for s in SERVICES for m in s.methods}

    def call(name: str, request, raise_errors: bool = True):
        service, method = methods[name]
        stub = channel.unary_unary(f"/{service.full_name}/{name}", request_serializer=lambda r: r.SerializeToString(),
                                   response_deserializer=GetMessageClass(method.output_type).FromString)
        try:
            return stub(request, timeout=timeout_s)
        except grpc.RpcError as error:
            if raise_errors:
                raise
            return error
    return call


def record(rec: Record, method: str, request, answer) -> None:
    code = answer.code().name if isinstance(answer, grpc.RpcError) else "OK"
    rec.codes.setdefault(method, Counter())[code] += 1
    if code in BAD:
        text = text_format.MessageToString(request, as_one_line=True)
        rec.failures.append((method, code, answer.details(), text[:600] + ("..." if len(text) > 600 else "")))
        rec.kept.append((method, request.SerializeToString()))


def fuzz_method(method, strategy, budget: int, deadline: float, call, rec: Record, alive, seed_: int) -> None:
    """Up to `budget` calls of `method` with requests from `strategy`, until `deadline` or the server's death."""
    @seed(seed_)
    @settings(max_examples=budget, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def case(request):
        if time.monotonic() < deadline and alive():
            record(rec, method.name, request, call(method.name, request, raise_errors=False))
    case()


def unary_methods() -> list:
    """Every unary method, those with the fewest request fields first (they use few cases; the rest get more)."""
    methods = [m for s in SERVICES for m in s.methods
               if not (m.client_streaming or m.server_streaming)]
    return sorted(methods, key=lambda m: len(m.input_type.fields))


def fuzz_all(args, call, known: Served, alive) -> Record:
    """Every unary method in turn, each with an equal share of the cases and of the time left."""
    rec, methods = Record(), unary_methods()
    end = time.monotonic() + args.max_time
    for i, method in enumerate(methods):
        left = len(methods) - i
        budget = max(1, (args.max_cases - sum(sum(c.values()) for c in rec.codes.values())) // left)
        share = max(0.0, end - time.monotonic()) / left
        strategies = requests(method, known)
        print(f"{method.containing_service.name}/{method.name}: up to {budget} cases", flush=True)
        for j, strategy in enumerate(strategies):
            fuzz_method(method, strategy, max(1, budget // len(strategies)),
                        time.monotonic() + share / (len(strategies) - j), call, rec, alive, args.seed + i)
    return rec


def serving(channel: grpc.Channel) -> bool:
    try:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    except grpc.RpcError:
        return False
    return answer.status == health_pb2.HealthCheckResponse.SERVING


# --- the run --------------------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, default=REPO / "models", help="the model store")
    p.add_argument("--only", default="", help="comma-separated models: serve a reduced store of just these")
    p.add_argument("--max-cases", type=int, default=3000, help="cases in all, shared among the methods")
    p.add_argument("--max-time", type=float, default=600.0, help="wall-clock limit of the cases, s")
    p.add_argument("--timeout", type=float, default=30.0, help="per call, s (DEADLINE_EXCEEDED: a possible hang)")
    p.add_argument("--seed", type=int, default=16)
    p.add_argument("--out", type=Path, help="also write the printed report (markdown) here")
    p.add_argument("--keep", type=Path, help="copy the server log and each failing request (serialized) here")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="genserve-grpc-fuzz-"))
    try:
        return run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> int:
    store = reduced_store(args.models, args.only.split(","), work) if args.only else args.models
    port, grpc_port, log = free_port(), free_port(), work / "server.log"
    process = start_server(store, port, grpc_port, log)
    options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    started = time.monotonic()
    try:
        wait_ready(process, f"http://127.0.0.1:{port}", log)
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}", options=options) as channel:
            call = caller(channel, args.timeout)
            known = served(call)
            rec = fuzz_all(args, call, known, lambda: process.poll() is None)
            ok = process.poll() is None and serving(channel)
    finally:
        stop(process)
    keep(args, rec, log)
    return summarize(args, rec, known, ok, time.monotonic() - started, log.read_text(errors="replace"))


def keep(args, rec: Record, log: Path) -> None:
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(log, args.keep / "server.log")
        for i, (method, data) in enumerate(rec.kept):
            (args.keep / f"{i:03d}-{method}.bin").write_bytes(data)


def summarize(args, rec: Record, known: Served, ok: bool, seconds: float, log_text: str) -> int:
    cases, tracebacks = sum(sum(c.values()) for c in rec.codes.values()), log_text.count("Traceback")
    lines = ["# gRPC fuzz: hypothesis requests for every unary method of a real `genserve serve`", "",
             f"- run: {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC (end), revision {revision()}",
             f"- command: `{' '.join(sys.argv)}`",
             f"- store: {args.models}" + (f" (only {args.only})" if args.only else "")
             + f"; {len(known.v1)} models, {len(known.v2)} V2 models",
             f"- cases: **{cases}** in {seconds:.0f} s (limits {args.max_cases} cases, {args.max_time:.0f} s; "
             f"{args.timeout:.0f} s per call); seed {args.seed}",
             f"- INTERNAL / UNKNOWN / DEADLINE_EXCEEDED: **{len(rec.failures)}**; tracebacks in the server's log: "
             f"{tracebacks}",
             f"- server alive and health SERVING afterwards: {'yes' if ok else '**no**'}", "",
             "| method | cases | status codes |", "|---|---|---|"]
    for method, codes in rec.codes.items():
        lines.append(f"| {method} | {sum(codes.values())} | "
                     + ", ".join(f"{c} {n}" for c, n in codes.most_common()) + " |")
    lines += ["", "Failures:", ""] + [f"- {m} **{c}**: `{d}`<br>request: `{r}`" for m, c, d, r in rec.failures]
    text = "\n".join(lines if rec.failures else lines + ["none"]) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    failed = bool(rec.failures) or bool(tracebacks) or not ok
    print("grpc_fuzz: " + ("FAIL" if failed else "OK"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
