"""An audio model's prompt is a recording (continued by `complete`), never text: a text prompt, empty or not, is a
422 naming the prompt over REST and INVALID_ARGUMENT over the engine (gRPC reaches the same check)."""

import asyncio

import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.engine.engine import Engine
from service.engine.errors import InvalidInput
from service.settings import Settings
from tests.service.shipped import shipped_engine


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Engine:
    return shipped_engine(tmp_path_factory, ["wavenet"])


@pytest.mark.parametrize("prompt", ["abc", ""])
def test_a_text_prompt_to_an_audio_model_is_refused_naming_the_prompt(engine, prompt):
    with pytest.raises(InvalidInput, match="audio models take no text prompt") as info:
        asyncio.run(engine.sample("wavenet", 1, 0, 1.0, None, prompt=prompt, length=10))
    assert info.value.field == "prompt"
    response = TestClient(create_app(engine, Settings())).post(
        "/v1/models/wavenet/sample", json={"n": 1, "seed": 0, "seconds": 0.01, "prompt": prompt})
    assert response.status_code == 422, response.text
    assert "prompt" in response.json()["error"]["field"] and "text prompt" in response.json()["error"]["message"]
