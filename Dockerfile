# Two images from one file (see docs/deploy.md):
#   docker build --target operator -t kubefusion-operator:0.1.0 .
#   docker build --target trainer  -t kubefusion-trainer:0.1.0 .
# Each target has a build stage that installs into a virtual environment and a final stage that only copies
# that environment in: no compiler, package cache or source tree ships.
# Users (docs/operator.md "PyTorchJob <job>", security; docs/deploy.md "Images"):
#   trainer   uid/gid 1000, the uid the operator runs every training pod as (runAsUser/runAsGroup/fsGroup 1000,
#             kubefusion_operator.api.RUN_AS_USER); HOME=/home/kubefusion (the WORKDIR) and HF_HOME=/opt/hf-cache
#             are owned by 1000 with group 0 and mode 0775, so uid 1000, or any uid in group 0, can write them.
#             Bake model weights into /opt/hf-cache in an image built on this one (pods never download).
#   operator  uid/gid 10001, what the chart's and manifests/operator.yaml's securityContext run it as.
# tests/deploy/test_deploy_dockerfile.py checks both against the operator and the chart.

# setuptools builds the two local packages (their pyproject.toml asks for setuptools>=68). Both are installed
# with --no-build-isolation on this pinned setuptools, so no build fetches whatever setuptools is newest.
ARG SETUPTOOLS_VERSION=84.2.1

# ------------------------------------------------------------------------------------------ bases
FROM python:3.11.14-slim-trixie AS python-base

# PyTorch 2.13's stable CUDA line is 13.0 (its PyPI wheel and download.pytorch.org/whl/cu130 build). The cu130
# torch wheel brings its own CUDA libraries as nvidia-* pip packages (cuBLAS, cuDNN, NCCL, the runtime...), so
# the `base` flavour is enough: it carries the driver-compat setup and NVIDIA_* variables for CUDA 13.0, and
# the `runtime` flavour would only add a second copy of those libraries (gigabytes) that torch never loads.
FROM nvidia/cuda:13.0.2-base-ubuntu24.04 AS cuda-base

# A static uv: it installs a standalone CPython 3.11.14 (the operator image's Python; the stack is pinned
# and tested on 3.11) into the Ubuntu 24.04 CUDA base, whose own Python is 3.12.
FROM ghcr.io/astral-sh/uv:0.13.8 AS uv

# ------------------------------------------------------------------------------------------ operator
FROM python-base AS operator-build
ARG SETUPTOOLS_VERSION
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
COPY requirements/operator.txt /src/requirements/operator.txt
RUN /opt/venv/bin/pip install --no-cache-dir -r /src/requirements/operator.txt "setuptools==${SETUPTOOLS_VERSION}"
COPY operator/ /src/operator/
# Dependencies came pinned from requirements/operator.txt; the package itself adds none.
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps --no-build-isolation /src/operator \
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
ARG SETUPTOOLS_VERSION
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
# tensorflow-cpu (from the requirements) never claims GPU memory: the GPUs belong to PyTorch. setuptools is
# pinned here too: tensorboard depends on it, and it builds the trainer package below.
COPY requirements/trainer.txt /src/requirements/trainer.txt
RUN uv pip install --python /opt/venv/bin/python \
        --index-url https://download.pytorch.org/whl/cu130 "torch==2.13.0+cu130" \
    && uv pip install --python /opt/venv/bin/python -r /src/requirements/trainer.txt \
        "setuptools==${SETUPTOOLS_VERSION}"
COPY trainer/ /src/trainer/
RUN uv pip install --python /opt/venv/bin/python --no-deps --no-build-isolation /src/trainer \
    && /opt/venv/bin/python -c "import kubefusion.cli, torch; assert torch.version.cuda.startswith('13.0'), torch.version.cuda"

FROM cuda-base AS trainer
# The operator runs training pods as uid/gid 1000 (runAsUser, runAsGroup and fsGroup 1000). Ubuntu 24.04 images
# ship a user and group `ubuntu` with exactly that uid/gid: it is removed and uid 1000 becomes `kubefusion`.
# HOME and the Hugging Face cache belong to uid 1000 and to group 0 (mode 0775): writable for uid 1000 and for
# a platform that runs an arbitrary uid in group 0; world-readable, so weights baked into /opt/hf-cache by a
# derived image load for any uid. No home is created by useradd: Ubuntu's HOME_MODE 0750 is what kept other
# uids out before.
RUN if id -u ubuntu >/dev/null 2>&1; then userdel ubuntu && rm -rf /home/ubuntu; fi \
    && if getent group ubuntu >/dev/null; then groupdel ubuntu; fi \
    && groupadd --gid 1000 kubefusion \
    && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /home/kubefusion \
       --shell /usr/sbin/nologin kubefusion \
    && mkdir -p /home/kubefusion /opt/hf-cache \
    && chown 1000:0 /home/kubefusion /opt/hf-cache \
    && chmod 0775 /home/kubefusion /opt/hf-cache
COPY --from=trainer-build /opt/python /opt/python
COPY --from=trainer-build /opt/venv /opt/venv
# Nothing reaches a model hub at run time: weights come from local paths, the packaged model or HF_HOME.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    HOME=/home/kubefusion \
    HF_HOME=/opt/hf-cache
LABEL org.opencontainers.image.title="kubefusion-trainer" \
      org.opencontainers.image.description="kubefusion trainer: preprocess, torchrun DDP training, ONNX export" \
      org.opencontainers.image.version="0.1.0"
# Numeric, and the operator's RUN_AS_USER: the pod's runAsNonRoot checks it without reading /etc/passwd.
USER 1000:1000
WORKDIR /home/kubefusion
# The operator sets the command (`kubefusion preprocess ...`, `torchrun -m kubefusion train ...`).
CMD ["kubefusion", "--help"]
