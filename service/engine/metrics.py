"""Prometheus metrics of the engine's schedulers, per model and function, in a registry of their own.

Named as Triton names its metrics, `nv_` -> `genserve_`, where Triton has a counterpart.
prometheus_client appends `_total` to every counter, so Triton's `nv_inference_count`
is exposed as `genserve_inference_count_total`. Durations are histograms in seconds
(Prometheus convention) where Triton has cumulative microsecond counters (`*_us`).

metric (labels: model, function unless said)   type       Triton counterpart (nv_...)
genserve_inference_request_total{outcome}        counter    -
genserve_inference_request_success_total         counter    inference_request_success
genserve_inference_request_failure_total{reason} counter    inference_request_failure{reason}
genserve_inference_request_duration_seconds      histogram  inference_request_duration_us
genserve_inference_queue_duration_seconds        histogram  inference_queue_duration_us
genserve_inference_compute_infer_duration_seconds histogram inference_compute_infer_duration_us
genserve_inference_batch_size                    histogram  - (rows per run call)
genserve_inference_count_total                   counter    inference_count (rows)
genserve_inference_exec_count_total              counter    inference_exec_count (run calls)
genserve_inference_pending_request_count         gauge      inference_pending_request_count
genserve_inference_inflight_request_count        gauge      - (queued or running)
genserve_samples_generated_total{model only}     counter    -
genserve_worker_restarts_total (no labels)       counter    -

outcome is one of success, rejected (queue full), cancelled, timeout, error; the failure
counter's reason is one of the four failing outcomes (Triton: REJECTED, CANCELED, BACKEND,
OTHER). Every outcome series exists from the first request, at 0.

As in Triton, the three duration histograms observe successful requests only, so their
_count equals the success counter; failures are counted, not timed. A request's duration
runs from entering the queue to its answer (for a stream: its last step's output); its
queue duration until it first runs; its compute duration is the time of the run calls it
took part in (for continuous batching, the sum over its steps). Batch size, count and
exec_count cover every run call, failed ones included.
"""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service.engine.scheduler import OUTCOMES, REJECTED, SUCCESS, Observer

DURATION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                    1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
LABELS = ("model", "function")


class EngineMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter("genserve_inference_request", "Inference requests answered or refused, by outcome",
                                (*LABELS, "outcome"), registry=r)
        self.success = Counter("genserve_inference_request_success", "Inference requests answered successfully",
                               LABELS, registry=r)
        self.failure = Counter("genserve_inference_request_failure", "Inference requests that failed, by reason",
                               (*LABELS, "reason"), registry=r)
        self.request_seconds = self._seconds("request", "Time from entering the queue to the answer, successful "
                                                        "requests (seconds)")
        self.queue_seconds = self._seconds("queue", "Time waiting in the queue before first running, successful "
                                                    "requests (seconds)")
        self.compute_seconds = self._seconds("compute_infer", "Time of the run calls a request took part in, "
                                                              "successful requests (seconds)")
        self.batch_size = Histogram("genserve_inference_batch_size", "Rows per run call of the model function",
                                    LABELS, buckets=BATCH_BUCKETS, registry=r)
        self.count = Counter("genserve_inference_count", "Rows run by the model function", LABELS, registry=r)
        self.exec_count = Counter("genserve_inference_exec_count", "Run calls (batches executed) of the model function",
                                  LABELS, registry=r)
        self.pending = Gauge("genserve_inference_pending_request_count", "Requests waiting in the queue",
                             LABELS, registry=r)
        self.inflight = Gauge("genserve_inference_inflight_request_count",
                              "Requests accepted and not yet answered (queued or running)", LABELS, registry=r)
        self.samples = Counter("genserve_samples_generated", "Samples (rows) that ran all their generation steps",
                               ("model",), registry=r)
        self.worker_restarts = Counter("genserve_worker_restarts", "Engine worker processes restarted after dying",
                                       registry=r)
        self.first_chunk_seconds = Histogram("genserve_stream_first_chunk_seconds",
                                             "Time from a streamed generation's start to its first chunk (seconds)",
                                             ("model",), buckets=DURATION_BUCKETS, registry=r)
        self.audio_seconds = Counter("genserve_audio_generated_seconds", "Seconds of audio generated, every sample "
                                     "of every request (sampled and completed)", ("model",), registry=r)

    def _seconds(self, what: str, documentation: str) -> Histogram:
        return Histogram(f"genserve_inference_{what}_duration_seconds", documentation, LABELS,
                         buckets=DURATION_BUCKETS, registry=self.registry)

    def observer(self, model: str, function: str) -> "FunctionObserver":
        """The hooks a scheduler of `function` of `model` calls."""
        return FunctionObserver(self, model, function)

    def worker_restarted(self) -> None:
        self.worker_restarts.inc()


class FunctionObserver(Observer):
    """Records one (model, function)'s scheduler events; every series it touches exists from creation."""

    def __init__(self, metrics: EngineMetrics, model: str, function: str) -> None:
        labels = (model, function)
        self.outcomes = {o: metrics.requests.labels(*labels, o) for o in OUTCOMES}
        self.failures = {o: metrics.failure.labels(*labels, o) for o in OUTCOMES if o != SUCCESS}
        self.success = metrics.success.labels(*labels)
        self.request_s = metrics.request_seconds.labels(*labels)
        self.queue_s = metrics.queue_seconds.labels(*labels)
        self.compute_s = metrics.compute_seconds.labels(*labels)
        self.batch_size = metrics.batch_size.labels(*labels)
        self.count = metrics.count.labels(*labels)
        self.exec_count = metrics.exec_count.labels(*labels)
        self.pending = metrics.pending.labels(*labels)
        self.inflight = metrics.inflight.labels(*labels)
        self._samples, self._model = metrics.samples, model

    def _outcome(self, outcome: str) -> None:
        self.outcomes[outcome].inc()
        if outcome == SUCCESS:
            self.success.inc()
        else:
            self.failures[outcome].inc()

    def rejected(self) -> None:
        self._outcome(REJECTED)

    def queued(self) -> None:
        self.pending.inc()
        self.inflight.inc()

    def dequeued(self) -> None:
        self.pending.dec()

    def batch(self, rows: int) -> None:
        self.batch_size.observe(rows)
        self.count.inc(rows)
        self.exec_count.inc()

    def finished(self, outcome: str, request_s: float, queue_s: float, compute_s: float) -> None:
        self.inflight.dec()
        self._outcome(outcome)
        if outcome == SUCCESS:
            self.request_s.observe(request_s)
            self.queue_s.observe(queue_s)
            self.compute_s.observe(compute_s)

    def generated(self, rows: int) -> None:
        self._samples.labels(self._model).inc(rows)
