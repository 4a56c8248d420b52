# cogrs: one predictor behind the Cog HTTP API, on ONNX Runtime.
#
# Build with docker/build (it fetches ONNX Runtime's libraries from PyPI into .cache/container/ort/
# and computes the run.cog.* labels), e.g.
#   docker/build --predictor smollm3                       # GPU image, default bases
#   docker/build --cpu --bin hello --predictor hello       # CPU image (local bases: docker/make-bases)
# Plain `docker build` works too once .cache/container/ort/$ORT_VARIANT/ exists; pass the labels'
# build args yourself then.
#
# Only the legacy builder's features are used (no BuildKit mounts), so dependency caching is the
# layer trick: the workspace's manifests and Cargo.lock with stub sources first, then the sources.

ARG BUILD_IMAGE=rust:1.95-bookworm
ARG BASE_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04

FROM ${BUILD_IMAGE} AS build
# cogrs (the predictors' binary) or hello (the runtime's example predictor).
ARG BIN=cogrs
WORKDIR /src
ENV CARGO_TERM_COLOR=never
COPY docker/stub-workspace /usr/local/bin/stub-workspace
COPY Cargo.toml Cargo.lock ./
COPY runtime/Cargo.toml runtime/
COPY weights/Cargo.toml weights/
COPY predictors/Cargo.toml predictors/
COPY tests/Cargo.toml tests/
# Stub every target the manifests name, build the dependencies, then forget the stubs.
# (A new workspace member needs its Cargo.toml copied above and its folder in both lists.)
RUN set -eu; \
    stub-workspace runtime/Cargo.toml weights/Cargo.toml predictors/Cargo.toml tests/Cargo.toml; \
    case "$BIN" in \
      cogrs) cargo build --release --locked -p cog-predictors --bin cogrs ;; \
      hello) cargo build --release --locked -p cog-runtime --example hello ;; \
      *) echo "BIN must be cogrs or hello, not $BIN" >&2; exit 2 ;; \
    esac; \
    rm -rf runtime weights predictors tests
COPY runtime runtime
COPY weights weights
COPY predictors predictors
COPY tests tests
# The sources' modification times may predate the stub build: touch them so cargo rebuilds them.
RUN set -eu; \
    find runtime weights predictors tests -name '*.rs' -exec touch {} +; \
    mkdir -p /out; \
    case "$BIN" in \
      cogrs) cargo build --release --locked -p cog-predictors --bin cogrs \
             && cp target/release/cogrs /out/ ;; \
      hello) cargo build --release --locked -p cog-runtime --example hello \
             && cp target/release/examples/hello /out/ ;; \
    esac

FROM ${BASE_IMAGE}
ARG BIN=cogrs
# The predictor `serve` runs (COG_PREDICTOR).
ARG PREDICTOR=smollm3
# Which ONNX Runtime: gpu (onnxruntime-gpu: CUDA 13, cuDNN 9, for the CUDA base) or cpu.
ARG ORT_VARIANT=gpu
# Labels Replicate reads; docker/build fills them from schemas/ (or the hello snapshot) and cog.yaml.
ARG COG_OPENAPI_SCHEMA=""
ARG COG_CONFIG=""
ARG COG_VERSION=""
RUN set -eu; \
    useradd --system --uid 10001 --user-group --home-dir /srv --no-create-home --shell /usr/sbin/nologin cog; \
    mkdir -p /srv /var/cache/cogrs /run/cog; \
    chown cog:cog /srv /var/cache/cogrs /run/cog
COPY .cache/container/ort/${ORT_VARIANT}/ /opt/onnxruntime/
COPY --from=build /out/${BIN} /usr/local/bin/${BIN}
ENV ORT_DYLIB_PATH=/opt/onnxruntime/libonnxruntime.so.1.31.1 \
    COG_BIN=${BIN} \
    COG_PREDICTOR=${PREDICTOR} \
    COG_WEIGHTS_CACHE=/var/cache/cogrs \
    PORT=5000
LABEL run.cog.openapi_schema="${COG_OPENAPI_SCHEMA}" \
      run.cog.config="${COG_CONFIG}" \
      run.cog.version="${COG_VERSION}" \
      org.opencontainers.image.title="cogrs ${PREDICTOR}"
USER cog
WORKDIR /srv
EXPOSE 5000
# `exec`: the server is PID 1 and gets SIGTERM (it drains running predictions, up to
# COG_SHUTDOWN_TIMEOUT seconds, then exits).
CMD ["/bin/sh", "-c", "exec \"$COG_BIN\" serve"]
