# syntax=docker/dockerfile:1
#
# oms-branch-operator image: `docker build -t oms-branch-operator:0.1.0 .`
# The first stage builds wheels (the project and every dependency); the final stage installs them
# offline, so it needs no compiler, no source tree and no network.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# README.md* : pyproject names a readme, and the glob lets the build go on while it is missing.
COPY pyproject.toml README.md* ./
COPY operator/ operator/
RUN pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="oms-branch-operator" \
      org.opencontainers.image.description="Kubernetes operator for OMS schema branches" \
      org.opencontainers.image.licenses="Apache-2.0"
# HOME=/tmp: the pod runs with a read-only root filesystem and an emptyDir at /tmp, and client
# libraries that cache under $HOME must find it writable.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp
# --no-index: only the wheels built above, so versions are exactly those resolved in that stage.
# The bind mount keeps the wheels out of every layer of this image. pip, setuptools and wheel go
# afterwards: nothing imports them at run time, and they are what scanners most often flag.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels oms-branch-operator \
    && python -m pip uninstall --yes setuptools wheel pip \
    && groupadd --system --gid 65532 nonroot \
    && useradd --system --uid 65532 --gid 65532 --home-dir /tmp --no-create-home \
       --shell /usr/sbin/nologin nonroot
# Numeric, so Kubernetes can verify runAsNonRoot without resolving a user name.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["branch-operator"]
CMD ["run"]
