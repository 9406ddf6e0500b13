"""Schemathesis over the OpenAPI schema (positive and negative cases) with the fake engine: never a 5xx.

Bounded: a fixed number of examples per operation, no deadline, no example database.
"""

import hypothesis
import schemathesis
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from test_api import MODELS, FakeEngine, settings

from service.api import create_app

schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(FakeEngine(), settings()))
NAMES = st.sampled_from(sorted(MODELS))


def _with_known(value, key: str):
    if isinstance(value, dict) and key in value:
        return NAMES.map(lambda name: {**value, key: name})
    return st.just(value)


@schema.hook
def before_generate_path_parameters(_context, strategy):
    """Half the time, a model that exists: otherwise nearly every case would stop at 404."""
    return st.one_of(strategy, strategy.flatmap(lambda params: _with_known(params, "name")))


@schema.hook
def before_generate_body(_context, strategy):
    """Likewise for the "model" field of POST /score."""
    return st.one_of(strategy, strategy.flatmap(lambda body: _with_known(body, "model")))


@schema.parametrize()
@hypothesis.settings(
    max_examples=30,
    deadline=None,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)
def test_no_server_errors(case):
    case.call_and_validate(checks=[not_a_server_error])
