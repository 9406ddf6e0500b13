"""A step of K values per call as an ONNX Loop over K / C calls of the same step unrolled C values long.

A traced step unrolls its K values into one graph (WaveNet: about 110 operations per sample, 44,000 for
K = 400), and onnxruntime's session creation grows with the graph: about 10 s. Looped, the graph holds one
chunk of C values, so it loads in a fraction of a second and runs the same operations in the same order:
the same outputs. The wrapper keeps the step's signature (inputs x_prev, <state...>, the per-value inputs,
the per-row inputs; outputs x and next_<state...>):
- per-value inputs ([B, K, ...]: noise, observed, mask) are cut into the chunks, one per iteration;
- x_prev and every state input are carried: iteration i gets chunk i - 1's x and next state (x_prev: only its
  last C values reach the chunk, which reads x_prev[:, -1] alone);
- per-row inputs (temperature, label) are read as they are by every iteration;
- x is the chunks' x side by side, next_<state> the last iteration's.
"""

from pathlib import Path

import onnx
from onnx import TensorProto, helper


def _renamed(graph: onnx.GraphProto, prefix: str, keep: set[str]) -> dict[str, str]:
    """Every value name of the graph except `keep` -> prefix + name (so the body's names cannot clash)."""
    names = {i.name for i in graph.initializer} | {v for n in graph.node for v in [*n.input, *n.output] if v}
    return {name: name if name in keep else prefix + name for name in names}


def loop_step(chunk_file: Path, out_file: Path, values: int, chunk: int, per_value: list[str],
              carried: dict[str, str], opset: int = 17) -> None:
    """Wrap the ONNX step in chunk_file (C = `chunk` values per call) into out_file, a step of `values` values.

    carried maps each carried input to the output that feeds it back (x_prev -> x, queue -> next_queue); the
    output carried into x_prev is the one whose chunks make up the loop's own output of that name.
    """
    inner = onnx.load(str(chunk_file))
    graph = inner.graph
    if values % chunk:
        raise ValueError(f"{values} values are not a whole number of chunks of {chunk}")
    inputs = {i.name: i for i in graph.input}
    per_row = [name for name in inputs if name not in per_value and name not in carried]
    x_in = next(name for name in carried if name == "x_prev")
    x_out = carried[x_in]
    rename = _renamed(graph, "chunk/", set(per_row))
    for name in per_value:
        rename[name] = f"chunk/{name}"
    body_nodes = [helper.make_node("Gather", [f"{name}/chunks", "i"], [rename[name]], axis=1) for name in per_value]
    for node in graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = "chunk/" + node.name
        copy.input[:] = [rename.get(v, v) if v else v for v in node.input]
        copy.output[:] = [rename.get(v, v) for v in node.output]
        for attribute in copy.attribute:
            if attribute.HasField("g") or len(attribute.graphs):
                raise ValueError(f"{chunk_file}: a step with subgraphs cannot be looped")
        body_nodes.append(copy)
    body_nodes += [helper.make_node("Identity", ["cond"], ["cond_out"]),
                   helper.make_node("Identity", [rename[x_out]], ["x_chunk"])]
    initializers = []
    for tensor in graph.initializer:
        copy = onnx.TensorProto()
        copy.CopyFrom(tensor)
        copy.name = rename[tensor.name]
        initializers.append(copy)
    body_inputs = [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                   helper.make_tensor_value_info("cond", TensorProto.BOOL, [])]
    body_inputs += [_value_like(inputs[name], rename[name]) for name in carried]
    outputs = {o.name: o for o in graph.output}
    body_outputs = [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, [])]
    body_outputs += [_value_like(outputs[carried[name]], rename[carried[name]]) for name in carried]
    body_outputs.append(_value_like(outputs[x_out], "x_chunk"))
    body = helper.make_graph(body_nodes, "chunk", body_inputs, body_outputs, initializers)

    steps = values // chunk
    nodes = [_constant("steps", TensorProto.INT64, [steps], scalar=True),
             _constant("true", TensorProto.BOOL, [1], scalar=True),
             _constant("start", TensorProto.INT64, [values - chunk]), _constant("end", TensorProto.INT64, [values]),
             _constant("axis1", TensorProto.INT64, [1]), _constant("flat", TensorProto.INT64, [0, -1]),
             helper.make_node("Slice", [x_in, "start", "end", "axis1"], [f"{x_in}/chunk"])]
    for name in per_value:
        rank = len(inputs[name].type.tensor_type.shape.dim)
        shape = [0, steps, chunk] + [-1] * (rank - 2)
        nodes += [_constant(f"{name}/shape", TensorProto.INT64, shape),
                  helper.make_node("Reshape", [name, f"{name}/shape"], [f"{name}/chunks"])]
    loop_inputs = ["steps", "true"] + [f"{x_in}/chunk" if name == x_in else name for name in carried]
    finals = [f"{carried[name]}/last" if name == x_in else carried[name] for name in carried]
    nodes += [helper.make_node("Loop", loop_inputs, [*finals, "x_chunks"], body=body),
              helper.make_node("Transpose", ["x_chunks"], ["x_rows"], perm=[1, 0, 2]),
              helper.make_node("Reshape", ["x_rows", "flat"], [x_out])]
    long = {x_in, x_out, *per_value}  # their axis 1 is the chunk's C inside, the loop's K outside
    main = helper.make_graph(nodes, graph.name, [_value_like(i, i.name, values if i.name in long else None)
                                                 for i in graph.input],
                             [_value_like(o, o.name, values if o.name in long else None) for o in graph.output])
    model = helper.make_model(main, opset_imports=list(inner.opset_import), producer_name="genserve onnx_loop")
    model.ir_version = inner.ir_version
    onnx.checker.check_model(model)
    onnx.save(model, str(out_file))


def _value_like(value: onnx.ValueInfoProto, name: str, axis1: int | None = None) -> onnx.ValueInfoProto:
    """A value info with `value`'s element type and rank under `name`: its axes as they are (a body's: unnamed),
    axis 1 set to axis1 if given."""
    tensor = value.type.tensor_type
    dims = [d.dim_param or (d.dim_value if d.HasField("dim_value") else None) for d in tensor.shape.dim]
    if axis1 is None and name != value.name:
        dims = [None] * len(dims)
    elif axis1 is not None:
        dims[1] = axis1
    return helper.make_tensor_value_info(name, tensor.elem_type, dims)


def _constant(name: str, dtype: int, values: list, scalar: bool = False) -> onnx.NodeProto:
    tensor = helper.make_tensor(name, dtype, [] if scalar else [len(values)], values)
    return helper.make_node("Constant", [], [name], value=tensor)
