#!/usr/bin/env bash
# Build the squadft image from ./Dockerfile for real, then run it as its non-root user.
#
# No docker engine and no registry here: buildah builds the Dockerfile as root with chroot
# isolation, and the base image is a local stand-in made from Debian bookworm packages
# (python3 3.11, venv, pip) instead of the CUDA PyTorch image, with torch installed from the
# local CPU wheel. This proves the Dockerfile's steps, pins, user, entrypoint and the demo;
# it does not prove the CUDA base (docs/DEPLOY.md, "What CI checks").
#
# Usage (root): .ci/build-image.sh
# Environment:
#   IMAGE_WORKDIR   cache for base.tar and the torch wheel    (/var/tmp/squadft-image)
#   IMAGE_TAG       tag of the built image         (squadft:<version in pyproject.toml>)
#   IMAGE_LATEST_TAG second tag of the same image, what `docker run ... squadft` and the
#                   README's commands look for; empty: none           (squadft:latest)
#   IMAGE_DEMO      1 = also run `squadft demo` in the image  (1)
#   IMAGE_DEMO_ARGS extra flags for that demo, e.g. "--max-steps 5 --max-eval-samples 50"
#                   for a short run (unset: the whole demo, ~5 min on 2 idle CPU cores)
#   TORCH_WHEEL     a torch wheel file to use instead of `pip download torch==<pin>`
#   IMAGE_EXPORT    write the image as an OCI archive to this path (unset: no export)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${IMAGE_WORKDIR:-/var/tmp/squadft-image}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/pyproject.toml")
# The documented build's two tags (README.md, docs/DEPLOY.md): the version, which the k8s
# manifests pin, and latest, which `docker run --gpus all squadft train` means.
IMAGE_TAG=${IMAGE_TAG:-squadft:$version}
IMAGE_LATEST_TAG=${IMAGE_LATEST_TAG-squadft:latest}
IMAGE_DEMO=${IMAGE_DEMO:-1}
BASE_TAG=localhost/squadft-base:ci
IMAGE_UID=10001
PYTHON=${PYTHON:-python3}
export BUILDAH_ISOLATION=chroot DEBIAN_FRONTEND=noninteractive

START=$SECONDS
LAST=$SECONDS
step() {
    echo "== build-image: $* (step $((SECONDS - LAST)) s, total $((SECONDS - START)) s)"
    LAST=$SECONDS
}
fail() { echo "build-image: FAILED: $*" >&2; exit 1; }

[ -n "$version" ] || fail "no version = \"...\" in pyproject.toml"

[ "$(id -u)" = 0 ] || fail "must run as root (buildah --isolation chroot)"
mkdir -p "$WORK/wheels" "$WORK/base"

if ! command -v buildah >/dev/null || ! command -v mmdebstrap >/dev/null; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends buildah fuse-overlayfs mmdebstrap >/dev/null
fi
step "tools ready ($(buildah --version))"

# --- stand-in base: Debian bookworm with python3 (cached as an image between runs) ----------
if ! buildah inspect --type image "$BASE_TAG" >/dev/null 2>&1; then
    if [ ! -s "$WORK/base/base.tar" ]; then
        mmdebstrap --quiet --variant=apt \
            --include=python3,python3-venv,python3-pip,ca-certificates \
            bookworm "$WORK/base/base.tar.part"
        mv "$WORK/base/base.tar.part" "$WORK/base/base.tar"
    fi
    printf 'FROM scratch\nADD base.tar /\nCMD ["/bin/bash"]\n' >"$WORK/base/Containerfile"
    buildah bud --quiet --isolation chroot -f "$WORK/base/Containerfile" -t "$BASE_TAG" \
        "$WORK/base" >/dev/null
fi
step "base image $BASE_TAG ready"

# --- the CPU torch wheel for the base's Python (the real image takes torch from its base) ---
base_ctr=$(buildah from --pull-never "$BASE_TAG")
base_python=$(buildah run --isolation chroot "$base_ctr" -- \
    python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
buildah rm "$base_ctr" >/dev/null
tag=${base_python/./}
if [ -z "${TORCH_WHEEL:-}" ]; then
    torch_pin=$(grep -E '^torch==' "$ROOT/constraints.txt" | head -n 1)
    [ -n "$torch_pin" ] || fail "no torch==<version> pin in constraints.txt"
    # Resolved through the host's pip configuration (a local wheel folder on the CI machines).
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
        --python-version "$base_python" --implementation cp --abi "cp$tag" \
        --platform manylinux_2_28_x86_64 -d "$WORK/wheels" "$torch_pin"
    TORCH_WHEEL=$(find "$WORK/wheels" -maxdepth 1 -name "torch-${torch_pin#torch==}*-cp$tag-*.whl" | head -n 1)
    [ -n "$TORCH_WHEEL" ] || fail "pip download $torch_pin left no cp$tag wheel in $WORK/wheels"
else
    cp -f "$TORCH_WHEEL" "$WORK/wheels/"
fi
wheel_name=$(basename "$TORCH_WHEEL")
# Everything else the Dockerfile installs, as wheels for the base's Python: the build then
# runs offline (pip inside RUN sees only /wheels) and proves docker/constraints*.txt complete.
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version "$base_python" --implementation cp --abi "cp$tag" \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 -d "$WORK/wheels" \
    -r "$ROOT/docker/constraints.txt" -r "$ROOT/docker/constraints-torch.txt" \
    -r "$ROOT/docker/constraints-build.txt" \
    "$(sed -n 's/^ARG DEMO_MODEL_REQUIREMENT="\(.*\)"/\1/p' "$ROOT/Dockerfile")"
case "$wheel_name" in
    *+cpu*) ;;
    *) echo "build-image: warning: $wheel_name is not a +cpu build" >&2 ;;
esac
step "wheelhouse for python $base_python ($wheel_name + $(find "$WORK/wheels" -name '*.whl' | wc -l) wheels)"

# --- the real Dockerfile ---------------------------------------------------------------------
revision=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
buildah bud --isolation chroot --pull-never --layers --force-rm \
    --build-arg BASE_IMAGE="$BASE_TAG" \
    --build-arg TORCH_REQUIREMENT="/wheels/$wheel_name" \
    --build-arg VERSION="$version" \
    --build-arg REVISION="$revision" \
    -v "$WORK/wheels:/wheels:ro" \
    -t "$IMAGE_TAG" "$ROOT"
if [ -n "$IMAGE_LATEST_TAG" ]; then
    buildah tag "$IMAGE_TAG" "$IMAGE_LATEST_TAG"
    image_id() { buildah images --quiet --no-trunc "$1" | head -n 1; }
    built_id=$(image_id "$IMAGE_TAG")
    if [ -z "$built_id" ] || [ "$built_id" != "$(image_id "$IMAGE_LATEST_TAG")" ]; then
        fail "$IMAGE_LATEST_TAG is not the image just built as $IMAGE_TAG"
    fi
fi
step "built $IMAGE_TAG${IMAGE_LATEST_TAG:+, also tagged $IMAGE_LATEST_TAG}"

# --- what docker/kubernetes would run: entrypoint, user, labels -----------------------------
entrypoint=$(buildah inspect --type image --format '{{.OCIv1.Config.Entrypoint}}' "$IMAGE_TAG")
user=$(buildah inspect --type image --format '{{.OCIv1.Config.User}}' "$IMAGE_TAG")
label=$(buildah inspect --type image \
    --format '{{index .OCIv1.Config.Labels "org.opencontainers.image.version"}}' "$IMAGE_TAG")
[ "$entrypoint" = '[squadft]' ] || fail "entrypoint is $entrypoint, want [squadft]"
[ "$user" = "$IMAGE_UID:$IMAGE_UID" ] || fail "image user is '$user', want $IMAGE_UID:$IMAGE_UID"
[ "$label" = "$version" ] || fail "version label is '$label', want $version"

ctr=$(buildah from --pull-never "$IMAGE_TAG")
cleanup() { buildah rm "$ctr" >/dev/null 2>&1 || true; }
trap cleanup EXIT
in_image() {
    buildah run --isolation chroot --user "$IMAGE_UID:$IMAGE_UID" "$ctr" -- "$@"
}
in_image squadft --help >"$WORK/help.txt"
grep -q 'train' "$WORK/help.txt" || fail "squadft --help does not list train"
[ "$(in_image id -u)" = "$IMAGE_UID" ] || fail "not running as $IMAGE_UID"
in_image sh -c 'touch /cache/.w /workspace/.w && rm /cache/.w /workspace/.w' \
    || fail "/cache or /workspace not writable by $IMAGE_UID"
in_image python3 -c 'import torch; assert torch.__version__.endswith("+cpu"), torch.__version__'
# The license, at the documented place and in the installed wheel's metadata.
in_image cat /usr/share/doc/squadft/LICENSE | cmp -s - "$ROOT/LICENSE" \
    || fail "/usr/share/doc/squadft/LICENSE is not the repository's LICENSE"
in_image sh -c 'cat /opt/venv/lib/python3*/site-packages/squadft-*.dist-info/licenses/LICENSE' \
    | cmp -s - "$ROOT/LICENSE" || fail "the installed squadft wheel does not carry LICENSE"
step "squadft --help, user $IMAGE_UID, writable /cache and /workspace, LICENSE"

if [ "$IMAGE_DEMO" = 1 ]; then
    # HF_HUB_OFFLINE: the demo must need nothing but the image (chroot isolation shares the
    # host network, so this is the closest to --network none buildah allows here).
    read -r -a demo_args <<<"${IMAGE_DEMO_ARGS:-}"
    buildah run --isolation chroot --user "$IMAGE_UID:$IMAGE_UID" \
        --env HF_HUB_OFFLINE=1 "$ctr" -- squadft demo "${demo_args[@]}"
    in_image test -s /workspace/output/demo/final/manifest.json \
        || fail "demo left no /workspace/output/demo/final/manifest.json"
    step "squadft demo ${IMAGE_DEMO_ARGS:-} inside the image (offline, user $IMAGE_UID)"
fi

if [ -n "${IMAGE_EXPORT:-}" ]; then
    buildah push --quiet "$IMAGE_TAG" "oci-archive:$IMAGE_EXPORT:$IMAGE_TAG"
    step "exported to $IMAGE_EXPORT ($(du -h "$IMAGE_EXPORT" | cut -f1))"
fi
echo "build-image: OK in $((SECONDS - START)) s"
