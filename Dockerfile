# genserve serving image: REST (8000, also /healthz /readyz /metrics) and gRPC (8001)
# over the model store copied to /app/models.
#
# torch is deliberately NOT in this image. pyproject.toml pins torch==2.13.0 (the CPU
# build) for training and for the TorchScript runtime, but serving models that ship
# ONNX files needs only onnxruntime, the default runtime. So the package is installed
# from source on PYTHONPATH, and its serving requirements are installed from
# pyproject.toml with torch filtered out. Consequences: GENSERVE_RUNTIME=torchscript does not work in this
# image, every model in models/ must carry its ONNX files, and the training package
# (and `genserve train|export|eval`) is not shipped. No package index URL is used.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN groupadd --system --gid 10001 genserve \
    && useradd --system --uid 10001 --gid genserve --create-home --home-dir /home/genserve \
        --shell /usr/sbin/nologin genserve

WORKDIR /app

# Serving requirements = [project].dependencies minus torch, with pyproject's own
# version bounds, so this list cannot drift from pyproject.toml.
COPY pyproject.toml README.md ./
RUN python -c "import re, tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; print('\n'.join(d for d in deps if re.split(r'[<>=!~;\[ ]', d, maxsplit=1)[0].strip().lower() != 'torch'))" > /tmp/requirements-serve.txt \
    && cat /tmp/requirements-serve.txt \
    && pip install --no-cache-dir -r /tmp/requirements-serve.txt \
    && rm /tmp/requirements-serve.txt

# The model store changes less often than the code: copy it first for layer caching.
COPY models/ models/
COPY proto/ proto/
COPY genserve/ genserve/
COPY service/ service/
# Run from source (not site-packages): the service finds proto/manifest.schema.json
# beside its own package, as in a checkout.
ENV PYTHONPATH=/app

USER 10001:10001

ENV GENSERVE_HOST=0.0.0.0 \
    GENSERVE_PORT=8000 \
    GENSERVE_GRPC_PORT=8001 \
    GENSERVE_MODELS=/app/models

EXPOSE 8000 8001

# No curl in slim images: probe /healthz with the standard library.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('GENSERVE_PORT', '8000'), timeout=4)"]

CMD ["python", "-m", "genserve", "serve"]
