# genserve serving image: REST (8000, also /healthz /readyz /metrics) and gRPC (8001) over the model store
# copied to /app/models. `make image-test` builds and smoke-tests it with podman; Dockerfile.cuda is the GPU image.
#
# The package is installed as a user installs it, `pip install .`: serving needs no torch, so the image has none.
# Consequences: GENSERVE_RUNTIME=torchscript is refused with a message naming genserve[torchscript], every model in
# models/ must carry its ONNX files, and training (`genserve train|export|eval`) is not shipped.

# --- build: the package and its serving dependencies in a venv, and the model store, both for the image to copy ---
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Readable by the image's user whatever the checkout's modes are (an exporter may write files 0600).
COPY models/ /models/
RUN chmod -R a+rX,go-w /models

WORKDIR /src
COPY pyproject.toml README.md ./
COPY proto/ proto/
COPY genserve/ genserve/
COPY service/ service/
RUN python -m venv /opt/genserve && /opt/genserve/bin/pip install --no-cache-dir .

# --- the image ----------------------------------------------------------------------------------------------------
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/genserve/bin:$PATH

RUN groupadd --system --gid 10001 genserve \
    && useradd --system --uid 10001 --gid genserve --create-home --home-dir /home/genserve \
        --shell /usr/sbin/nologin genserve

WORKDIR /app
# The model store changes less often than the code: its layer comes first.
COPY --from=build /models models/
COPY --from=build /opt/genserve /opt/genserve

USER 10001:10001

ENV GENSERVE_HOST=0.0.0.0 \
    GENSERVE_PORT=8000 \
    GENSERVE_GRPC_PORT=8001 \
    GENSERVE_MODELS=/app/models

EXPOSE 8000 8001

# GET /healthz on GENSERVE_PORT, over https when GENSERVE_TLS_CERT is set (no curl in slim images).
HEALTHCHECK --interval=15s --timeout=10s --start-period=60s --retries=3 CMD ["python", "-m", "genserve.healthcheck"]

CMD ["genserve", "serve"]
