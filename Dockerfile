# Two images from one file (see docs/deploy.md):
#   docker build --target operator -t kubefusion-operator:0.1.0 .
#   docker build --target trainer  -t kubefusion-trainer:0.1.0 .
# Each target has a build stage that installs into a virtual environment and a final stage that only copies
# that environment in: no compiler, package cache or source tree ships, and both run as uid 10001.

# ------------------------------------------------------------------------------------------ bases
FROM python:3.11.14-slim-trixie AS python-base

# PyTorch 2.13's stable CUDA line is 13.0 (its PyPI wheel and download.pytorch.org/whl/cu130 build); the
# runtime base matches it so the driver-compat setup and NVIDIA_* variables fit the libraries torch loads.
FROM nvidia/cuda:13.0.2-runtime-ubuntu24.04 AS cuda-base

# A static uv: it installs a standalone CPython 3.11.14 (the operator image's Python; the stack is pinned
# and tested on 3.11) into the Ubuntu 24.04 CUDA base, whose own Python is 3.12.
FROM ghcr.io/astral-sh/uv:0.13.8 AS uv

# ------------------------------------------------------------------------------------------ operator
FROM python-base AS operator-build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
COPY requirements/operator.txt /src/requirements/operator.txt
RUN /opt/venv/bin/pip install --no-cache-dir -r /src/requirements/operator.txt
COPY operator/ /src/operator/
# Dependencies came pinned from requirements/operator.txt; the package itself adds none.
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps /src/operator \
    && /opt/venv/bin/python -c "import kubefusion_operator"

FROM python-base AS operator
RUN groupadd --system --gid 10001 kubefusion \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin kubefusion
COPY --from=operator-build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
LABEL org.opencontainers.image.title="kubefusion-operator" \
      org.opencontainers.image.description="kopf operator: MultimodalTrainJob -> Kubeflow PyTorchJob" \
      org.opencontainers.image.version="0.1.0"
# Numeric user, so that the pod's runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
# 8080: Prometheus /metrics; 8081: kopf liveness /healthz (docs/architecture.md).
EXPOSE 8080 8081
ENTRYPOINT ["kubefusion-operator"]

# ------------------------------------------------------------------------------------------ trainer
FROM cuda-base AS trainer-build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1
RUN uv python install 3.11.14 \
    && uv venv --python 3.11.14 /opt/venv
# torch first, from PyTorch's CUDA 13.0 index: requirements/trainer.txt pins torch==2.13.0, which
# 2.13.0+cu130 satisfies, so the second step keeps the CUDA build (the dev machines use the CPU wheel).
# tensorflow-cpu (from the requirements) never claims GPU memory: the GPUs belong to PyTorch.
COPY requirements/trainer.txt /src/requirements/trainer.txt
RUN uv pip install --python /opt/venv/bin/python \
        --index-url https://download.pytorch.org/whl/cu130 "torch==2.13.0+cu130" \
    && uv pip install --python /opt/venv/bin/python -r /src/requirements/trainer.txt
COPY trainer/ /src/trainer/
RUN uv pip install --python /opt/venv/bin/python --no-deps /src/trainer \
    && /opt/venv/bin/python -c "import kubefusion.cli, torch; assert torch.version.cuda.startswith('13.0'), torch.version.cuda"

FROM cuda-base AS trainer
RUN groupadd --system --gid 10001 kubefusion \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/kubefusion \
       --shell /usr/sbin/nologin kubefusion
COPY --from=trainer-build /opt/python /opt/python
COPY --from=trainer-build /opt/venv /opt/venv
# Nothing reaches a model hub at run time: weights come from local paths or the packaged model.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    HOME=/home/kubefusion
LABEL org.opencontainers.image.title="kubefusion-trainer" \
      org.opencontainers.image.description="kubefusion trainer: preprocess, torchrun DDP training, ONNX export" \
      org.opencontainers.image.version="0.1.0"
USER 10001:10001
WORKDIR /home/kubefusion
# The operator sets the command (`kubefusion preprocess ...`, `torchrun -m kubefusion train ...`).
CMD ["kubefusion", "--help"]
