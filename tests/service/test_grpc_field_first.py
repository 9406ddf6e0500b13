"""A refusal's message begins with the field it names, as the README promises, for gRPC too: a missing tensor
(an absent message is an empty Tensor on the wire), a label a model does not take, labels out of range."""

import asyncio

import numpy as np
import pytest

from service.engine.engine import Engine
from service.engine.errors import InvalidInput
from service.grpc.gen import genserve_pb2 as pb
from service.grpc.genserve_servicer import to_array
from tests.service.shipped import shipped_engine


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Engine:
    return shipped_engine(tmp_path_factory, ["pixelcnn", "midinet", "vae", "realnvp"])


def refused(call) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        call()
    assert info.value.detail.startswith(info.value.field + ":"), info.value.detail
    return info.value


def test_a_missing_tensor_is_required_not_a_bad_dtype():
    assert refused(lambda: to_array(pb.Tensor(), "mask")).detail == "mask: required"


def test_label_refusals_begin_with_their_field(engine):
    digits = np.zeros((1, 1, 28, 28), np.int64)
    error = refused(lambda: asyncio.run(engine.score("pixelcnn", digits, labels=[10])))
    assert error.field == "labels" and "0..9, got 10..10" in error.detail
    for model in ("vae", "realnvp"):  # an importance-sampled bound; a flow's dequantized likelihood
        error = refused(lambda model=model: asyncio.run(engine.score(model, digits, labels=[3])))
        assert error.detail == f"labels: model {model!r} scores without labels"
    error = refused(lambda: asyncio.run(engine.sample("midinet", 1, 0, 1.0, 1)))
    assert error.field == "label" and "takes no class label" in error.detail
