"""The gRPC API over the real engine and the tiny exported VAE: Encode, Decode, Reconstruct, Interpolate,
importance-sampled scores, Markov-chain steps, and their refusals as status codes naming the field."""

import asyncio

import grpc
import numpy as np
import pytest

from service.engine.engine import Engine
from service.grpc import build_grpc_server
from service.grpc.gen import genserve_pb2 as pb
from service.grpc.gen import genserve_pb2_grpc as pb_grpc
from service.grpc.genserve_servicer import to_array, to_tensor
from service.settings import Settings
from service.store import ModelStore

MODEL = "vae"
TIMEOUT_S = 60.0  # per test: the whole scenario
RPC_S = 20.0  # per call


@pytest.fixture(scope="module")
def settings(tiny_vae_store) -> Settings:
    return Settings(host="127.0.0.1", models=tiny_vae_store, intra_op_threads=1)


@pytest.fixture(scope="module")
def engine(tiny_vae_store, settings) -> Engine:
    return Engine(ModelStore(tiny_vae_store), settings)


def scenario(engine: Engine, settings: Settings, body) -> None:
    """Run body(stub) against a server on a free port of 127.0.0.1, every wait bounded."""
    async def main() -> None:
        server = build_grpc_server(engine, settings, 0)
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.genserve_port}")
        try:
            await asyncio.wait_for(channel.channel_ready(), RPC_S)
            await body(pb_grpc.GenserveStub(channel))
        finally:
            await channel.close()
            await server.stop(grace=None)

    asyncio.run(asyncio.wait_for(main(), TIMEOUT_S))


def binary_images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2, size=(count, 1, 28, 28)).astype(np.uint8)


async def refused(call) -> tuple[grpc.StatusCode, str]:
    """(status code, genserve-error-field) of a call that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), dict(info.value.trailing_metadata() or ()).get("genserve-error-field", "")


def test_encode_decode_reconstruct_interpolate(engine, settings):
    x = binary_images(3)

    async def body(s):
        encoded = await s.Encode(pb.EncodeRequest(model=MODEL, inputs=to_tensor(x)), timeout=RPC_S)
        assert encoded.seed == 0 and set(encoded.outputs) == {"mean", "std"}
        mean, std = to_array(encoded.outputs["mean"], "mean"), to_array(encoded.outputs["std"], "std")
        assert mean.dtype == np.float32 and mean.shape == std.shape and mean.shape[0] == 3 and (std > 0).all()

        decoded = await s.Decode(pb.DecodeRequest(model=MODEL, z=to_tensor(mean)), timeout=RPC_S)
        images = to_array(decoded.images, "images")
        assert images.dtype == np.float32 and images.shape == (3, 1, 28, 28)
        assert images.min() >= 0.0 and images.max() <= 1.0
        as_float64 = await s.Decode(pb.DecodeRequest(model=MODEL, z=to_tensor(mean.astype(np.float64))),
                                    timeout=RPC_S)
        np.testing.assert_array_equal(to_array(as_float64.images, "images"), images)

        rebuilt = await s.Reconstruct(pb.ReconstructRequest(model=MODEL, inputs=to_tensor(x)), timeout=RPC_S)
        np.testing.assert_allclose(to_array(rebuilt.images, "images"), images, rtol=0, atol=1e-6)
        request = pb.ReconstructRequest(model=MODEL, inputs=to_tensor(x), refine_steps=2, seed=7)
        refined = await s.Reconstruct(request, timeout=RPC_S)
        assert refined.seed == 7
        again = await s.Encode(pb.EncodeRequest(model=MODEL, inputs=to_tensor(x), refine_steps=2, seed=7),
                               timeout=RPC_S)
        redecoded = await s.Decode(pb.DecodeRequest(model=MODEL, z=again.outputs["mean"]), timeout=RPC_S)
        np.testing.assert_allclose(to_array(refined.images, "images"), to_array(redecoded.images, "images"),
                                   rtol=0, atol=1e-6)

        line = await s.Interpolate(pb.InterpolateRequest(model=MODEL, inputs=to_tensor(x[:2]), steps=4),
                                   timeout=RPC_S)
        z, pictures = to_array(line.z, "z"), to_array(line.images, "images")
        assert z.shape == (4, mean.shape[1]) and pictures.shape == (4, 1, 28, 28)
        np.testing.assert_array_equal(z[[0, -1]], mean[:2])
        np.testing.assert_allclose(pictures[[0, -1]], images[:2], rtol=0, atol=1e-5)
        default = await s.Interpolate(pb.InterpolateRequest(model=MODEL, inputs=to_tensor(x[:2])), timeout=RPC_S)
        assert list(default.z.shape) == [8, mean.shape[1]]

    scenario(engine, settings, body)


def test_score_bounds_sample_and_complete(engine, settings):
    x = binary_images(2, seed=1)

    async def body(s):
        got = {}
        for method in ("elbo", "iwae"):
            request = pb.ScoreRequest(model=MODEL, inputs=to_tensor(x), method=method, k=10, seed=3)
            got[method] = (await s.Score(request, timeout=RPC_S)).results
        for elbo, iwae in zip(got["elbo"], got["iwae"], strict=True):
            assert (elbo.method, iwae.method, elbo.k, iwae.k) == ("elbo", "iwae", 10, 10)
            assert elbo.HasField("stderr") and elbo.stderr > 0 and iwae.is_lower_bound
            assert iwae.log_likelihood_nats >= elbo.log_likelihood_nats - 1e-9  # same noise: Jensen
            assert not iwae.HasField("free_energy")
        refined = (await s.Score(pb.ScoreRequest(model=MODEL, inputs=to_tensor(x), refine_steps=2),
                                 timeout=RPC_S)).results
        assert [r.refine_steps for r in refined] == [2, 2] and refined[0].HasField("k")
        single = (await s.Score(pb.ScoreRequest(model=MODEL, inputs=to_tensor(x), k=1), timeout=RPC_S)).results
        assert not single[0].HasField("stderr")

        first = await s.Sample(pb.SampleRequest(model=MODEL, n=2, seed=4), timeout=RPC_S)
        second = await s.Sample(pb.SampleRequest(model=MODEL, n=2, seed=4), timeout=RPC_S)
        assert first.samples == second.samples and list(first.samples.shape) == [2, 1, 28, 28]

        mask = np.zeros((1, 28, 28), np.uint8)
        mask[:, 14:] = 1  # the bottom half observed
        request = pb.CompleteRequest(model=MODEL, inputs=to_tensor(x), mask=to_tensor(mask), n=2, seed=1, steps=2)
        out = to_array((await s.Complete(request, timeout=RPC_S)).completions, "completions")
        assert out.shape == (2, 2, 1, 28, 28)
        np.testing.assert_array_equal(out[:, :, :, 14:], np.broadcast_to(x[:, None, :, 14:], out[:, :, :, 14:].shape))

    scenario(engine, settings, body)


def test_bad_requests_name_the_field(engine, settings):
    x, width = binary_images(2), engine.describe(MODEL)["data"]["shape"]
    invalid = grpc.StatusCode.INVALID_ARGUMENT

    async def body(s):
        score = {"k": {"k": 0}, "method": {"method": "exact"}, "refine_steps": {"refine_steps": 10**4},
                 "refine": {"refine": "newton", "refine_steps": 1}}
        for field, options in score.items():
            request = pb.ScoreRequest(model=MODEL, inputs=to_tensor(x), **options)
            assert await refused(s.Score(request, timeout=RPC_S)) == (invalid, field)
        request = pb.ScoreRequest(model=MODEL, inputs=to_tensor(x), k=10**6)
        assert await refused(s.Score(request, timeout=RPC_S)) == (invalid, "k")
        request = pb.EncodeRequest(model=MODEL, inputs=to_tensor(x), refine_steps=-1)
        assert await refused(s.Encode(request, timeout=RPC_S)) == (invalid, "refine_steps")
        for call, message in ((s.Encode, pb.EncodeRequest), (s.Reconstruct, pb.ReconstructRequest)):
            request = message(model=MODEL, inputs=to_tensor(x), refine_steps=1, refine="learned")  # tiny: no such rule
            assert await refused(call(request, timeout=RPC_S)) == (invalid, "refine")
        for z, field in ((np.zeros((2, 99), np.float32), "z"), (np.zeros((2, 4), np.int64), "z.dtype"),
                         (np.full((1, 4), np.nan, np.float32), "z"),
                         (np.full((1, 4), 3.4e38, np.float32), "z")):  # finite, but NaN images (latent: 4)
            assert await refused(s.Decode(pb.DecodeRequest(model=MODEL, z=to_tensor(z)), timeout=RPC_S)) == \
                (invalid, field)
        for shape in ([0, 2**62], [1, 0]):
            z = pb.Tensor(dtype="float32", shape=shape)
            assert await refused(s.Decode(pb.DecodeRequest(model=MODEL, z=z), timeout=RPC_S)) == (invalid, "z.shape")
        three = pb.InterpolateRequest(model=MODEL, inputs=to_tensor(binary_images(3)))
        assert await refused(s.Interpolate(three, timeout=RPC_S)) == (invalid, "inputs")
        one_step = pb.InterpolateRequest(model=MODEL, inputs=to_tensor(x), steps=1)
        assert await refused(s.Interpolate(one_step, timeout=RPC_S)) == (invalid, "steps")
        assert await refused(s.Sample(pb.SampleRequest(model=MODEL, steps=3), timeout=RPC_S)) == (invalid, "steps")
        assert await refused(s.Sample(pb.SampleRequest(model=MODEL, label=0), timeout=RPC_S)) == (invalid, "label")
        chain = pb.CompleteRequest(model=MODEL, inputs=to_tensor(x), mask=to_tensor(np.ones(width, np.uint8)),
                                   steps=10**6)
        assert await refused(s.Complete(chain, timeout=RPC_S)) == (invalid, "steps")
        stream = s.SampleStream(pb.SampleRequest(model=MODEL), timeout=RPC_S)
        assert (await refused(stream.read()))[0] == grpc.StatusCode.FAILED_PRECONDITION  # draws each sample at once
        assert await refused(s.Encode(pb.EncodeRequest(model="nope", inputs=to_tensor(x)), timeout=RPC_S)) == \
            (grpc.StatusCode.NOT_FOUND, "model")

    scenario(engine, settings, body)
