"""A V2 call whose finite inputs overflow inside the model (GAN noise of 2e38) was answered 200 with every pixel
int64's least value; the engine now refuses any integer data output outside the data's levels, naming the float
inputs (validation.check_output_levels), as it refuses non-finite float outputs. On the shipped `gan`."""

import asyncio

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.api import v2
from service.engine.errors import InvalidInput
from service.engine.validation import check_output_levels
from tests.service.shipped import shipped_engine


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return shipped_engine(tmp_path_factory, ["gan"])


def gan_sample(engine, eps: float) -> dict[str, np.ndarray]:
    inputs = {"eps": np.full((2, 64), eps, np.float32), "temperature": np.ones(2, np.float32)}
    return asyncio.run(engine.infer("gan", "sample", inputs))


def test_noise_that_overflows_the_generator_is_refused_naming_it(engine):
    x = gan_sample(engine, 1.0)["x"]  # in range: answered as before
    assert x.shape == (2, 1, 28, 28) and 0 <= x.min() and x.max() <= 255
    with pytest.raises(InvalidInput) as refused:
        gan_sample(engine, 2e38)
    assert refused.value.field == "eps, temperature" and "levels 0..255" in str(refused.value)


def test_the_v2_route_answers_400_not_a_200_of_garbage(engine):
    app = FastAPI()
    app.include_router(v2.router(engine))
    body = {"inputs": [{"name": "eps", "datatype": "FP32", "shape": [1, 64], "data": [2e38] * 64},
                       {"name": "temperature", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.post("/v2/models/gan.sample/infer", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith("eps, temperature: the model's output 'x'")


@pytest.mark.parametrize("x, refused", [([0, 255], False), ([-1, 3], True), ([0, 256], True),
                                        ([np.iinfo(np.int64).min], True)])
def test_levels_are_checked_on_integer_data_outputs_only(x, refused):
    outputs = {"x": np.array(x, np.int64), "mean": np.array([-5.0, 300.0]), "log_prob": np.array([-1e9])}
    inputs = {"z": np.zeros((1, 4), np.float32), "label": np.zeros(1, np.int64)}  # the float inputs are named
    if refused:
        with pytest.raises(InvalidInput, match="^z: the model's output 'x'"):
            check_output_levels(outputs, 256, inputs)
    else:
        check_output_levels(outputs, 256, inputs)  # floats and non-data outputs are not levels
    check_output_levels({"next_x": np.array([0, 1])}, 2, inputs)
    with pytest.raises(InvalidInput):
        check_output_levels({"next_x": np.array([2])}, 2, inputs)
