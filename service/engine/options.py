"""The options a request may carry, with their bounds: one definition for every protocol.

REST's request bodies (service/api/schemas.py) are built from these types, so the bounds appear in the OpenAPI schema
and a violation is a 422 naming the field; the gRPC adapter checks the fields of its OPTIONS (and n, seed,
temperature, length) with `checked`, so the same value is refused for the same reason, as an INVALID_ARGUMENT naming the
field. What depends on the model (a label's class count, a length's limit, a chord's name, k's maximum, a chain's
steps) the engine checks, for both; both adapters check `length` against the deployment's limit (`length` below)
before the engine's checks, and for `label` and `chords` REST's schema refuses the values outside its bounds first,
so there the two protocols' words can differ.

A number refuses JSON true or false and a string (pydantic's lax mode would read true as 1 and "3" as 3), and NaN
and infinity; integers stay within the gRPC API's int32 where it has one.
"""

import functools
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, TypeAdapter, ValidationError
from pydantic_core import PydanticCustomError

from service.engine.errors import InvalidInput
from service.engine.validation import (
    ANOMALY_METHOD_MAX,
    MAX_INT32,
    MAX_SECONDS,
    MAX_SEED,
    MAX_TEMPERATURE,
    MIN_TEMPERATURE,
)


def not_lax(what: str, text_allowed: bool = False) -> BeforeValidator:
    """A validator refusing JSON true or false where `what` belongs, and a string unless `what` may be text."""
    def refuse(value: Any) -> Any:
        if isinstance(value, bool):
            raise PydanticCustomError("number_not_boolean", f"must be {what}, not true or false")
        if isinstance(value, str) and not text_allowed:
            raise PydanticCustomError("number_not_string", f"must be {what}, not a string")
        return value

    return BeforeValidator(refuse)


# On every number of a request, after its Field (so that the OpenAPI schema keeps its minimum and maximum): 3 (and
# 3.0) is 3; true and "3" are refused naming the field.
JsonNumber = not_lax("a number")
Number = Annotated[float, Field(allow_inf_nan=False), JsonNumber]  # a number without bounds (a latent, a value)

TopK = Annotated[int | None, Field(ge=0, le=MAX_INT32,
                                   description="text models: sample among the k likeliest characters (0 or absent: "
                                               "all)"), JsonNumber]
Seed = Annotated[int | None, Field(ge=0, le=MAX_SEED, description="random seed; drawn and echoed when absent"),
                 JsonNumber]


def _at_least_min_temperature(value: float) -> float:
    """Refuse a temperature under MIN_TEMPERATURE in words (Field(ge=1e-30) would write it out in 30 decimals)."""
    if value < MIN_TEMPERATURE:
        raise PydanticCustomError("temperature_too_low", f"must be at least {MIN_TEMPERATURE:g} (below, logits / "
                                                         "temperature overflow float32)")
    return value


Temperature = Annotated[float, Field(le=MAX_TEMPERATURE, allow_inf_nan=False, description="sampling temperature",
                                     json_schema_extra={"minimum": MIN_TEMPERATURE}), JsonNumber,
                        AfterValidator(_at_least_min_temperature)]
NoiseSeed = Annotated[int, Field(ge=0, le=MAX_SEED, description="seed of the noise (importance samples, posterior "
                                                                 "refinement); absent: 0, so answers are "
                                                                 "reproducible"), JsonNumber]
RefineSteps = Annotated[int, Field(ge=0, le=MAX_INT32,
                                   description="latent-variable models: gradient steps refining q(z given x) before "
                                               "use, 0..the model's max (encode.refine.max_steps)"), JsonNumber]
Refine = Annotated[str, Field(max_length=32, description="latent-variable models: the refinement rule, gradient "
                                                       "(ascent on the ELBO) or one in encode.refine.updates "
                                                       "(learned: a trained update, Marino et al. 2017)")]
Bars = Annotated[int | None, Field(ge=1, le=MAX_INT32, description="music models: bars to generate, 1..the model's "
                                                                   "max_steps; absent: one per chord, else the "
                                                                   "model's default"), JsonNumber]
Chords = Annotated[list[Annotated[str, Field(max_length=16)]] | None,
                   Field(max_length=4096, description="music models: a chord per bar by name (capabilities.sample."
                                                      "step_controls.chords.names, e.g. C, Am, F#m; N: none); "
                                                      "absent: none")]
ChainSteps = Annotated[int | None, Field(ge=1, le=MAX_INT32,
                                         description="models that run a Markov chain (capability procedure "
                                                     "markov_chain): its number of steps, 1..max_steps; absent: the "
                                                     "model's default"), JsonNumber]
Label = Annotated[int, Field(ge=0, le=MAX_INT32), JsonNumber]
Seconds = Annotated[float | None, Field(gt=0, le=MAX_SECONDS, allow_inf_nan=False,
                                        description="audio models: seconds to generate (instead of length)"),
                    JsonNumber]
ChunkMs = Annotated[int | None, Field(ge=1, le=60000, description="audio streams: milliseconds of audio per chunk "
                                                                  "(absent: 100)"), JsonNumber]
K = Annotated[int | None, Field(ge=1, le=MAX_INT32, description="importance samples per input, 1..max_k; absent: "
                                                                "the model's default"), JsonNumber]
ScoreMethod = Annotated[str | None, Field(max_length=32, description="latent-variable models: the bound, one of "
                                                                     "capabilities.score.methods (iwae, elbo); "
                                                                     "absent: the model's default")]
AnomalyMethod = Annotated[str | None, Field(
    max_length=ANOMALY_METHOD_MAX,
    description="the anomaly detector: nll (a GAN: critic), typical_nll, complexity, class, reconstruction, "
                "inversion, likelihood_ratio, hierarchical_ratio, latent_mahalanobis, mix:<a>+<b>[+<c>], "
                "states:<a>+<b>[+<c>] (density of states), typicality (one p-value for the request's inputs); "
                "absent: the model's calibrated default")]
Direction = Annotated[str | None, Field(max_length=64, description="one of capabilities.translate.directions "
                                                                   "(cyclegan: a_to_b, b_to_a); left out: the "
                                                                   "capability's function")]


@functools.cache
def samples(limit: int) -> Any:
    """`n` under a deployment's limit (Settings.max_samples_per_request)."""
    return Annotated[int, Field(ge=1, le=limit, description="number of samples"), JsonNumber]


@functools.cache
def length(limit: int) -> Any:
    """`length` under a deployment's limit (Settings.max_sequence_length)."""
    return Annotated[int | None, Field(ge=1, le=limit, description="text and audio models: characters or audio "
                                                                   "samples to generate after the prompt or input "
                                                                   "(absent: the model's default)"), JsonNumber]


@functools.cache
def _adapter(option: Any) -> TypeAdapter:
    return TypeAdapter(option)


def checked(option: Any, value: Any, field: str) -> Any:
    """`value` validated as `option` (one of the types above), or InvalidInput naming `field` with the reason REST
    gives for the same value."""
    try:
        return _adapter(option).validate_python(value)
    except ValidationError as exc:
        raise InvalidInput(f"{field}: {exc.errors()[0]['msg']}", field=field) from None
