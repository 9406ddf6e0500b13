"""Request and response bodies of the REST API.

Request models carry limits from Settings (n, number of inputs), so they are
built per app by `request_models(settings)`; the limits then appear in the
OpenAPI schema and violations are ordinary 422 validation errors naming the
field (e.g. "body.n"). A request refuses unknown fields (a misspelt
"temprature" is a 422 naming it, not a silent default) and non-finite numbers
(NaN, Infinity, or 1e400, which JSON parsing makes infinite); integers stay
within the gRPC API's int32 where it has one. Response models allow extra
fields: the contract may gain fields, never lose them.
"""

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    WrapValidator,
)
from pydantic_core import PydanticCustomError

from service.engine.latent import MAX_CLASS_NAME
from service.engine.options import (
    AnomalyMethod,
    Bars,
    ChainSteps,
    Chords,
    ChunkMs,
    Direction,
    JsonNumber,
    K,
    Label,
    NoiseSeed,
    Number,
    Refine,
    RefineSteps,
    ScoreMethod,
    Seconds,
    Seed,
    Temperature,
    TopK,
    length,
    not_lax,
    samples,
)
from service.settings import Settings

# An input: for an image model a base64 PNG or nested integer levels, for a text model a string.
# The codecs check the structure themselves, so that every problem gets one message naming the input's index.
Input = Annotated[
    Any,
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "description": "text (text models), or base64 PNG (grayscale, levels scaled "
                                                  "to 0..255)"},
                {"type": "array", "description": "nested integer levels 0..levels-1, e.g. [H][W] or [1][H][W]"},
            ]
        }
    ),
]
Mask = Annotated[
    Any,
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "description": "base64 PNG; pixel >= 128 means observed"},
                {"type": "array", "description": "nested 0/1, 1 = observed; one mask for all inputs or one per input"},
            ]
        }
    ),
]
Format = Annotated[Literal["array", "png", "text", "wav", "midi"] | None,
                   Field(description="array (integer levels or codes), png (images; music: a piano roll), text (text "
                                     "models), wav (audio models: base64 16-bit PCM WAV) or midi (music models: a "
                                     "base64 Standard MIDI File); absent: text for text models, wav for audio models, "
                                     "midi for music models, array otherwise")]
Actions = Annotated[list[Any] | None,
                    Field(description="state-space models (capabilities.predict.actions): the actions, [L, "
                                      "*actions.shape] for every row or [rows, L, *actions.shape]; action t moves "
                                      "frame t to frame t + 1. predict: T - 1 + S for T observed and S predicted "
                                      "frames; encode: T - 1; sample: S, for S + 1 frames per sample")]
Voice = Annotated[int | str | None, Field(description="audio models: the voice, by index or name (data.classes); "
                                                      "absent: drawn from the voice prior"),
                  not_lax("a voice's index or name", text_allowed=True)]


def _control_value(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """One error for a bad control value, not one per member of the union."""
    try:
        return handler(value)
    except ValidationError:
        raise PydanticCustomError("control_value", "must be a finite number or a name (a categorical control's "
                                                   "class) or a list of finite numbers (a continuous one)") from None


ControlValue = Annotated[int | float | list[Number] | Annotated[str, Field(max_length=MAX_CLASS_NAME)],
                         not_lax("a number or a class name", text_allowed=True), WrapValidator(_control_value)]
ImageFormat = Annotated[Literal["array", "png"] | None,
                        Field(description="array (nested floats, [B, *data.shape], expected values in level units) "
                                          "or png (grayscale or RGB, levels scaled to 0..255); absent: array")]


# --- responses ---------------------------------------------------------------------------------------------------


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorDetail(_Open):
    code: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ModelInfo(_Open):
    name: str
    version: int | str
    family: str
    capabilities: list[str]
    data: dict[str, Any]
    metrics: dict[str, Any] = {}


class UnavailableModel(BaseModel):
    name: str
    version: int | str
    available: bool = False
    reason: str = Field(description="why the store left it out (GENSERVE_SKIP_BAD_MODELS)")


class ModelList(BaseModel):
    models: list[ModelInfo]
    unavailable: list[UnavailableModel] = Field([], description="models in the store that are not served")


class SampleResponse(_Open):
    model: str
    version: int | str
    seed: int
    samples: list[str | list[Any]]


class Anomaly(_Open):
    score: float | None = Field(description="the detector's score: higher is more anomalous")
    percentile: float | None = Field(description="the score's percentile among held-out in-distribution inputs")
    is_anomaly: bool | None
    method: str | None = Field(None, description="the detector that answered")
    score_kind: str | None = Field(None, description="what the score measures")
    p_value: float | None = Field(None, description="typicality: the request's one p-value")
    batch_size: int | None = Field(None, description="typicality: how many inputs the p-value covers")


class ScoreResult(_Open):
    log_likelihood_nats: float | None = Field(description="log p(x) in nats (null for a critic's score)")
    bits_per_dim: float | None = Field(description="-log2 p(x) per value (null for a critic's score)")
    method: str = Field(description="exact, elbo, iwae, ais, dequantized, or critic: a GAN discriminator's "
                                    "score, which is no likelihood")
    critic: float | None = Field(None, description="method critic: the critic's output (higher: more like the "
                                                   "training data); the anomaly score is its negative")
    anomaly: Anomaly | None = None
    k: int | None = Field(None, description="importance-sampled bounds: samples per input")
    refine_steps: int | None = Field(None, description="importance-sampled bounds: posterior refinement steps")
    stderr: float | None = Field(None, description="standard error of the estimate (null for k = 1)")
    is_lower_bound: bool | None = Field(None, description="whether log_likelihood_nats bounds log p(x) from below")
    free_energy: float | None = Field(None, description="undirected models: F(x), with log p(x) = -F(x) - log Z")


class ScoreResponse(_Open):
    model: str
    version: int | str
    results: list[ScoreResult]


class CompleteResponse(_Open):
    model: str
    version: int | str
    seed: int
    completions: list[list[str | list[Any]]]


class EncodeResponse(_Open):
    model: str
    version: int | str
    mean: list[list[Any]] = Field(description="q(z given x)'s mean per input, [B, D]; a state-space model's filtered "
                                              "state per frame, [B, T, D]; a VRNN's filtered q(z_t) per frame too")
    std: list[list[Any]] | None = Field(None, description="q(z given x)'s standard deviation per input, [B, D] "
                                                          "(a VRNN's per frame, [B, T, D]; absent for a state-space "
                                                          "model)")


class PredictResponse(_Open):
    model: str
    version: int | str
    states: list[list[list[float]]] = Field(description="the filtered states of the observed frames, then the "
                                                        "predicted ones: [B, T + S, D]")
    frames: list[str | list[Any]] = Field(description="the S predicted frames per input: integer levels [S][H][W], "
                                                      "or a base64 animated PNG or GIF (format)")


class ImagesResponse(_Open):
    model: str
    version: int | str
    images: list[str | list[Any]] = Field(description="expected images E[x given z], [B, *data.shape] floats in "
                                                      "level units, or base64 PNGs")


class TranslateResponse(_Open):
    model: str
    version: int | str
    images: list[str | list[Any]] = Field(description="the translations, [B, *data.shape] integer levels "
                                                      "0..data.levels-1 (as gRPC's int64 tensor), or base64 PNGs")


class InterpolateResponse(ImagesResponse):
    z: list[list[float]] = Field(description="the latents, [steps, D]: the ends are the inputs' posterior means")


class Status(BaseModel):
    status: str


# --- requests ----------------------------------------------------------------------------------------------------


class _Request(BaseModel):
    """A request body: unknown fields and non-finite numbers are 422s naming the field."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


@dataclass(frozen=True)
class RequestModels:
    sample: type[BaseModel]
    score: type[BaseModel]
    score_named: type[BaseModel]
    complete: type[BaseModel]
    encode: type[BaseModel]
    reconstruct: type[BaseModel]
    decode: type[BaseModel]
    interpolate: type[BaseModel]
    translate: type[BaseModel]
    predict: type[BaseModel]


def request_models(settings: Settings) -> RequestModels:
    """Request bodies with this deployment's limits baked in."""
    Samples, Length = samples(settings.max_samples_per_request), length(settings.max_sequence_length)
    Inputs = Annotated[list[Input], Field(min_length=1, max_length=settings.max_inputs_per_request)]
    Labels = Annotated[
        list[Label | None] | None,
        Field(max_length=settings.max_inputs_per_request, description="class label per input; null: marginalize"),
    ]

    class SampleRequest(_Request):
        n: Samples = 1
        seed: Seed = None
        temperature: Temperature = 1.0
        label: Label | None = None
        format: Format = None
        length: Length = None
        top_k: TopK = None
        prompt: Annotated[str | None, Field(max_length=settings.max_sequence_length,
                                            description="text models: the text to continue; samples start "
                                                        "with it. Caption models (capabilities.sample.prompt): "
                                                        "the caption, in the model's words")] = None
        seconds: Seconds = None
        voice: Voice = None
        chunk_ms: ChunkMs = None
        steps: ChainSteps = None
        bars: Bars = None
        chords: Chords = None
        controls: Annotated[dict[str, ControlValue] | None,
                            Field(max_length=16, description="models with sample controls (capabilities.sample."
                                                             "controls, e.g. an InfoGAN's codes): a value per "
                                                             "control, a class for a categorical one (its integer "
                                                             "index, or its name from the control's names), a list "
                                                             "for a continuous one; absent ones are drawn")
                            ] = None
        actions: Actions = None

    class ScoreRequest(_Request):
        inputs: Inputs
        labels: Labels = None
        method: ScoreMethod = None
        k: K = None
        refine_steps: RefineSteps = 0
        refine: Refine = "gradient"
        seed: NoiseSeed = 0
        anomaly_method: AnomalyMethod = None

    class NamedScoreRequest(ScoreRequest):
        model: str = Field(max_length=256, description="model name")

    class CompleteRequest(_Request):
        inputs: Inputs
        mask: Annotated[Mask | None, Field(description="images: which values are observed (required); text "
                                                       "models continue each input and take none")] = None
        n: Samples = 1
        seed: Seed = None
        temperature: Temperature = 1.0
        format: Format = None
        length: Length = None
        top_k: TopK = None
        seconds: Seconds = None
        voice: Voice = None
        steps: ChainSteps = None

    class EncodeRequest(_Request):
        inputs: Inputs
        refine_steps: RefineSteps = 0
        refine: Refine = "gradient"
        seed: NoiseSeed = 0

    class ReconstructRequest(EncodeRequest):
        format: ImageFormat = None

    class DecodeRequest(_Request):
        z: Annotated[list[list[Number]], Field(min_length=1, max_length=settings.max_inputs_per_request,
                                               description="latents, [B, D]")]
        format: ImageFormat = None

    class InterpolateRequest(_Request):
        inputs: Annotated[list[Input], Field(min_length=2, max_length=2, description="the two ends")]
        steps: Annotated[int, Field(description="points on the line between the ends' posterior means, ends "
                                                "included (2..64)"), JsonNumber] = 8
        format: ImageFormat = None

    class TranslateRequest(_Request):
        inputs: Annotated[list[Input], Field(min_length=1, max_length=settings.max_inputs_per_request,
                                             description="images of capabilities.translate.input's shape and levels")]
        direction: Direction = None
        format: Annotated[Literal["array", "png"] | None,
                          Field(description="array (nested integer levels, [B, *data.shape]) or png (levels "
                                            "scaled to 0..255); absent: array")] = None

    class EncodeFramesRequest(EncodeRequest):
        """encode: a state-space model's inputs are sequences of frames, and it takes the actions between them."""
        actions: Actions = None

    class PredictRequest(_Request):
        inputs: Annotated[list[Any], Field(min_length=1, max_length=settings.max_inputs_per_request,
                                           description="sequences of observed frames, each a list of frames (nested "
                                                       "integer levels or base64 PNGs); all of one length T")]
        actions: Actions
        format: Annotated[Literal["array", "png", "gif"] | None,
                          Field(description="the predicted frames as integer levels (array, the default), or one "
                                            "base64 animated PNG or GIF per input")] = None

    return RequestModels(SampleRequest, ScoreRequest, NamedScoreRequest, CompleteRequest, EncodeFramesRequest,
                         ReconstructRequest, DecodeRequest, InterpolateRequest, TranslateRequest, PredictRequest)
