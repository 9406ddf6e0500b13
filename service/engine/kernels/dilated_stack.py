"""Kernel `dilated_gated_stack`: the sampling step of a stack of gated dilated causal convolutions, fused.

The step's maths is the one its ONNX graph unrolls (WaveNet's fast generation: van den Oord et al. 2016,
Paine et al. 2016), here as one compiled loop over the samples of a call, so that a sample costs its
arithmetic (about 0.2 MFLOP) instead of some 110 graph operations. Per sample and row, with R residual
channels, S skip channels, L layers of dilation d_l, `levels` codes:
    h_0        = embedding[x_prev]                                             [R]
    z_l        = gate_weight[l] @ [h_{l-1}(t - d_l); h_{l-1}(t)] + gate_bias[label, l]   [2R]
    g_l        = tanh(z_l[:R]) * sigmoid(z_l[R:])                              [R]
    h_l        = h_{l-1} + residual_weight[l] @ g_l        (l < L - 1)
    logits     = out_w @ relu(hidden_w @ relu(skip_w @ [g_1; ...; g_L] + skip_b) + hidden_b) + out_b
    x          = observed where mask, else the smallest k with u < CDF_k of softmax(logits / temperature)
Each layer's last d_l inputs are its queue: the state `queue` [B, sum(d), R], layer after layer, oldest first.
Within a call each layer's queue is a ring (slot k mod d_l holds the input d_l samples old), put back in
oldest-first order at the end.

The weights come from a safetensors file (see Kernel). The layer sizes are compile-time constants of the loop,
so each product x @ W keeps its outputs in vector registers while it walks W's rows; exp, tanh and sigmoid are
one polynomial exp (Cephes' expf, within 2 ulp) that the compiler vectorizes; sums are reassociated. So the
logits agree with onnxruntime's to float32 rounding, and the drawn codes are equal unless a uniform falls within
rounding (about 1e-6) of a CDF step.

numba compiles the loop on first use (seconds) and caches the machine code (cache=True; a later process loads
it in well under a second): in __pycache__ beside this file, or where the package is read-only, in
NUMBA_CACHE_DIR (set below to a per-user cache folder when it is unset).
"""

import functools
import logging
import math
import os
import tempfile
from pathlib import Path

import numpy as np
from llvmlite import ir
from numba import carray, njit, types
from numba.core import cgutils, config
from numba.extending import intrinsic

KIND = "dilated_gated_stack"
log = logging.getLogger("genserve.kernels")


def numba_cache_dir(package: Path, environ, writable=lambda path: os.access(path, os.W_OK)) -> str | None:
    """Where numba should cache this module's machine code: None (its default, __pycache__ beside the module, or
    a NUMBA_CACHE_DIR already set) unless the package's folder is read-only; then a per-user cache folder."""
    if environ.get("NUMBA_CACHE_DIR") or writable(package):
        return None
    base = Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    base = base if writable(base if base.exists() else base.parent) else Path(tempfile.gettempdir())
    return str(base / f"genserve-numba-{os.getuid()}")


if (_cache := numba_cache_dir(Path(__file__).parent, os.environ)) is not None:
    os.environ["NUMBA_CACHE_DIR"] = _cache
    config.reload_config()  # numba read its environment when it was imported

FAST = {"contract", "reassoc", "arcp", "nsz"}  # reorder sums, fuse multiply-adds; no assumptions about inf or nan
F32 = np.float32


@intrinsic
def _float_from_bits(typingctx, bits):
    """The float32 whose bits are the int32 `bits` (free: a register reinterpretation)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@njit(inline="always", fastmath=FAST, error_model="numpy")
def _exp(x):
    """expf: Cephes' range reduction and degree-6 polynomial, branch-free so that a loop of it vectorizes."""
    x = min(max(x, F32(-87.0)), F32(88.0))
    n = np.floor(x * F32(1.44269504088896341) + F32(0.5))
    r = x - n * F32(0.693359375) + n * F32(2.12194440e-4)
    p = F32(1.9875691500e-4)
    p = p * r + F32(1.3981999507e-3)
    p = p * r + F32(8.3334519073e-3)
    p = p * r + F32(4.1665795894e-2)
    p = p * r + F32(1.6666665459e-1)
    p = p * r + F32(5.0000001201e-1)
    p = p * r * r + r + F32(1.0)
    return p * _float_from_bits((np.int32(n) + np.int32(127)) << np.int32(23))


@intrinsic
def _stack(typingctx, size):
    """A float32 buffer of `size` (a compile-time constant) on the stack: the compiler keeps it in registers."""
    if not isinstance(size, types.IntegerLiteral):
        return None
    n = size.literal_value

    def codegen(context, builder, signature, args):
        return cgutils.alloca_once(builder, context.get_value_type(types.float32), size=n)

    return types.CPointer(types.float32)(size), codegen


@njit(inline="always", fastmath=FAST, error_model="numpy")
def _dense4(x, b0, weight, bias, out, acc, relu):
    """out[b0 + q] = bias + f(x[b0 + q]) @ weight for q < 4 (f: relu or identity), a block of acc.shape[1] columns
    at a time: four rows share each load of the weights, and acc [4, C] (on the stack) stays in registers."""
    width = acc.shape[1]
    for c in range(weight.shape[1] // width):
        for q in range(4):
            for j in range(width):
                acc[q, j] = bias[c * width + j]
        for i in range(weight.shape[0]):
            a0, a1, a2, a3 = x[b0, i], x[b0 + 1, i], x[b0 + 2, i], x[b0 + 3, i]
            if relu:
                a0, a1, a2, a3 = max(a0, F32(0.0)), max(a1, F32(0.0)), max(a2, F32(0.0)), max(a3, F32(0.0))
            for j in range(width):
                w = weight[i, c * width + j]
                acc[0, j] += a0 * w
                acc[1, j] += a1 * w
                acc[2, j] += a2 * w
                acc[3, j] += a3 * w
        for q in range(4):
            for j in range(width):
                out[b0 + q, c * width + j] = acc[q, j]


@njit(inline="always", fastmath=FAST, error_model="numpy")
def _draw(logits, temperature, u, e):
    """Inverse-CDF draw from softmax(logits / temperature): the number of CDF values <= u, at most levels - 1
    (the CDF a running sum in order, as onnxruntime's CumSum)."""
    levels = logits.shape[0]
    top = logits[0] / temperature
    for j in range(levels):
        e[j] = logits[j] / temperature
        top = max(top, e[j])
    total = F32(0.0)
    for j in range(levels):
        e[j] = _exp(e[j] - top)
        total += e[j]
    scale, cdf = F32(1.0) / total, F32(0.0)
    for j in range(levels - 1):  # the CDF's values in order: stop at the first above u
        cdf += e[j] * scale
        if u < cdf:
            return j
    return levels - 1


@functools.cache
def compiled(r: int, skips: int, layers: int, levels: int, block: int):
    """The sampling loop for these sizes. They are compile-time constants of it, so that every product's
    accumulators live in registers (a quarter of the time of the same loop over run-time sizes); numba caches
    one compiled loop per set of sizes."""
    r2, gated = 2 * r, layers * r
    width = 32 if skips % 32 == 0 and levels % 32 == 0 else math.gcd(skips, levels)  # columns per 4-row block
    four_rows = 4 * width

    @njit(cache=True, nogil=True, fastmath=FAST, error_model="numpy")
    def sample_rows(x_last, ring, noise, temperature, label, observed, mask, embedding, offsets, dilations,
                    gate_weight, gate_bias, residual_weight, skip_weight, skip_bias, hidden_weight, hidden_bias,
                    output_weight, output_matrix, output_bias, x_out, logits_out):
        """K samples for B rows; see `Kernel.step` for the arguments. Sample-major: every row goes through a
        layer before the next layer starts, so that the layer's weights stay in the L1 cache."""
        rows, k_len = noise.shape
        h = np.empty((rows, r), np.float32)  # each row's input to the layer being computed
        gates = np.empty((rows, gated), np.float32)
        e = np.empty(levels, np.float32)
        z, z2, g = carray(_stack(r2), (r2,)), carray(_stack(r2), (r2,)), carray(_stack(r), (r,))
        acc2 = carray(_stack(r), (r,))
        acc, s, t = carray(_stack(r), (r,)), carray(_stack(skips), (skips,)), carray(_stack(skips), (skips,))
        o = carray(_stack(block), (block,))
        acc4 = carray(_stack(four_rows), (4, width))
        s4, t4 = np.empty((rows, skips), np.float32), np.empty((rows, skips), np.float32)
        logits4 = np.empty((rows, levels), np.float32)
        jammed = rows - rows % 4
        x = x_last.copy()
        for k in range(k_len):
            for b in range(rows):
                for i in range(r):
                    h[b, i] = embedding[x[b], i]
            for layer in range(layers):
                slot = offsets[layer] + k % dilations[layer]
                for b in range(rows):
                    for j in range(r2):  # z = [queued input; input] @ W + bias, in two independent sums
                        z[j], z2[j] = gate_bias[label[b], layer, j], F32(0.0)
                    for i in range(r):
                        a, c = ring[b, slot, i], h[b, i]
                        ring[b, slot, i] = c
                        for j in range(r2):
                            z[j] += a * gate_weight[layer, i, j]
                            z2[j] += c * gate_weight[layer, r + i, j]
                    for j in range(r):  # tanh(a) sigmoid(c) = (e^2a - 1) / ((e^2a + 1)(1 + e^-c))
                        ea, ec = _exp(F32(2.0) * (z[j] + z2[j])), _exp(-(z[r + j] + z2[r + j]))
                        g[j] = (ea - F32(1.0)) / ((ea + F32(1.0)) * (F32(1.0) + ec))
                        gates[b, layer * r + j] = g[j]
                    if layer < layers - 1:  # h += g @ U, even and odd rows of U in two independent sums
                        for j in range(r):
                            acc[j], acc2[j] = h[b, j], F32(0.0)
                        for i in range(0, r - 1, 2):
                            a, c = g[i], g[i + 1]
                            for j in range(r):
                                acc[j] += a * residual_weight[layer, i, j]
                                acc2[j] += c * residual_weight[layer, i + 1, j]
                        if r % 2:
                            for j in range(r):
                                acc[j] += g[r - 1] * residual_weight[layer, r - 1, j]
                        for j in range(r):
                            h[b, j] = acc[j] + acc2[j]
            for b0 in range(0, jammed, 4):  # the head, four rows at a time
                _dense4(gates, b0, skip_weight, skip_bias, s4, acc4, False)
                _dense4(s4, b0, hidden_weight, hidden_bias, t4, acc4, True)
                _dense4(t4, b0, output_matrix, output_bias, logits4, acc4, True)
            for b in range(jammed, rows):  # and the rows left over, one at a time
                for j in range(skips):  # s = gates @ skip_weight + skip_bias
                    s[j] = skip_bias[j]
                for i in range(gated):
                    a = gates[b, i]
                    for j in range(skips):
                        s[j] += a * skip_weight[i, j]
                for j in range(skips):  # t = relu(s) @ hidden_weight + hidden_bias
                    t[j] = hidden_bias[j]
                for i in range(skips):
                    a = max(s[i], F32(0.0))
                    for j in range(skips):
                        t[j] += a * hidden_weight[i, j]
                for c in range(levels // block):  # logits = relu(t) @ output_weight + output_bias, by column block
                    for j in range(block):
                        o[j] = output_bias[c * block + j]
                    for i in range(skips):
                        a = max(t[i], F32(0.0))
                        for j in range(block):
                            o[j] += a * output_weight[c, i, j]
                    for j in range(block):
                        logits4[b, c * block + j] = o[j]
            for b in range(rows):
                if logits_out.shape[0]:
                    logits_out[b, k] = logits4[b]
                drawn = _draw(logits4[b], temperature[b], noise[b, k], e)
                x[b] = observed[b, k] if mask[b, k] > 0 else drawn
                x_out[b, k] = x[b]

    return sample_rows


def rotate(ring: np.ndarray, dilations: np.ndarray, k_len: int) -> np.ndarray:
    """The queues [B, sum(d), R] oldest first again, after sample_rows advanced each layer's ring k_len slots."""
    start, parts = 0, []
    for d in dilations.tolist():
        shift = k_len % d
        parts += [ring[:, start + shift: start + d], ring[:, start: start + shift]]
        start += d
    return np.concatenate(parts, axis=1)


NAMES = ("embedding", "dilations", "gate_weight", "gate_bias", "residual_weight", "skip_weight", "skip_bias",
         "hidden_weight", "hidden_bias", "output_weight", "output_bias")


class Kernel:
    """The fused step over one weights file (every matrix [in, out]: x @ W):
    embedding [levels, R]; dilations [L] int64; gate_weight [L, 2R, 2R] over [queued input; input];
    gate_bias [classes, L, 2R] (each class's gate bias, the layer's own included); residual_weight [L - 1, R, R];
    skip_weight [L R, S], skip_bias [S]; hidden_weight [S, S], hidden_bias [S]; output_weight [S, levels],
    output_bias [levels]."""

    def __init__(self, weights: dict[str, np.ndarray], threads: int = 0):
        missing = set(NAMES) - set(weights)
        if missing:
            raise ValueError(f"kernel {KIND}: the weights lack {sorted(missing)}")
        w = {n: np.ascontiguousarray(weights[n], np.int64 if n == "dilations" else np.float32) for n in NAMES}
        self.dilations = w["dilations"]
        levels, r = w["embedding"].shape
        skips, block = w["skip_bias"].shape[0], 64 if levels % 64 == 0 else levels
        self.queue_shape = [int(self.dilations.sum()), r]
        offsets = np.concatenate([[0], np.cumsum(self.dilations)[:-1]]).astype(np.int64)
        output_weight = np.ascontiguousarray(w["output_weight"].reshape(skips, levels // block, block).swapaxes(0, 1))
        self.weights = (w["embedding"], offsets, self.dilations, w["gate_weight"], w["gate_bias"],
                        w["residual_weight"], w["skip_weight"], w["skip_bias"], w["hidden_weight"], w["hidden_bias"],
                        output_weight, w["output_weight"], w["output_bias"])
        self.loop = compiled(r, skips, len(self.dilations), levels, block)
        self.levels, self.threads, self.pool = levels, threads or os.cpu_count() or 1, None

    inputs = ("x_prev", "queue", "noise", "temperature", "label", "observed", "mask")
    outputs = ("x", "next_queue")

    def warm_up(self) -> None:
        """Compile the loop, or load it from numba's cache: one sample of one row. A cache entry that cannot be
        loaded (written by another copy of this module, or damaged) is dropped, and the loop compiled afresh."""
        def one() -> None:
            self.step(np.zeros((1, 1), np.int64), np.zeros([1, *self.queue_shape], np.float32),
                      np.zeros((1, 1), np.float32), np.ones(1, np.float32))

        try:
            one()
        except Exception as e:  # noqa: BLE001 - numba raises what unpickling the entry raised
            log.warning("kernel %s: numba's cached machine code did not load (%r); compiling afresh", KIND, e)
            self.loop._cache.flush()  # numba's FunctionCache: forget the index, so the compile is saved anew
            one()

    def run(self, **feeds: np.ndarray) -> dict[str, np.ndarray]:
        """The step function: inputs by name (label, observed and mask may be left out) -> outputs by name."""
        return dict(zip(self.outputs, self.step(**feeds), strict=True))

    def step(self, x_prev, queue, noise, temperature, label=None, observed=None, mask=None, logits: bool = False):
        """x_prev [B, K'] int64 (x_prev[:, -1] the previous code), queue [B, sum(d), R], noise [B, K] uniform,
        temperature [B], label [B] int64, observed, mask [B, K] int64 (observed codes where mask is 1)
        -> (x [B, K] int64, next_queue [B, sum(d), R][, logits [B, K, levels] with logits=True])."""
        if noise.ndim != 2:
            raise ValueError(f"kernel {KIND} draws one code per uniform: noise must be [B, K], not {noise.shape}")
        rows, k_len = noise.shape
        zeros = np.zeros((rows, k_len), np.int64)
        label = np.zeros(rows, np.int64) if label is None else label
        observed, mask = zeros if observed is None else observed, zeros if mask is None else mask
        ring = np.array(queue, np.float32, order="C")  # a copy: the caller's queue stays as it was
        x = np.empty((rows, k_len), np.int64)
        logits_out = np.empty((rows, k_len, self.levels) if logits else (0, 0, 0), np.float32)
        args = [np.ascontiguousarray(x_prev[:, -1], np.int64), ring, np.ascontiguousarray(noise, np.float32),
                np.ascontiguousarray(temperature, np.float32), np.ascontiguousarray(label, np.int64),
                np.ascontiguousarray(observed, np.int64), np.ascontiguousarray(mask, np.int64)]
        parts = min(self.threads, rows)
        if parts <= 1:
            self.loop(*args, *self.weights, x, logits_out)
        else:  # rows are independent: a block of rows per thread (the loop runs without the GIL)
            cuts = [round(i * rows / parts) for i in range(parts + 1)]

            def part(i: int) -> None:
                rows_i = slice(cuts[i], cuts[i + 1])
                self.loop(*(a[rows_i] for a in args), *self.weights, x[rows_i],
                          logits_out[rows_i] if logits else logits_out)

            list(self._pool().map(part, range(parts)))
        outputs = (x, rotate(ring, self.dilations, k_len))
        return (*outputs, logits_out) if logits else outputs

    def _pool(self):
        if self.pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix=KIND)
        return self.pool
