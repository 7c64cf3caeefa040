# workflow-proxy container image (Debian 12 "bookworm").
#
#   docker build -t workflow-proxy:0.1.0 .
#   docker run --rm \
#     -v "$PWD/my-config.yaml:/etc/workflow-proxy/workflow-proxy.yaml:ro" \
#     -v "$PWD/secrets:/run/secrets/workflow-proxy:ro" \
#     -p 127.0.0.1:9460:9460 -p 127.0.0.1:9464:9464 workflow-proxy:0.1.0
#
# The image holds no configuration and no secret: mount the configuration at
# /etc/workflow-proxy/workflow-proxy.yaml (or pass --config PATH) and the
# secrets as files, e.g. under /run/secrets/workflow-proxy/ (api_key_file,
# admin.token_file). The conventional ports are 9460 (client) and 9464
# (admin: /healthz /readyz /metrics /admin/purge); the configuration decides.
# docs/deployment.md describes the image, deploy/compose.yaml runs a demo.

ARG DEBIAN_IMAGE=debian:12-slim

# --- build ------------------------------------------------------------------
FROM ${DEBIAN_IMAGE} AS build
# The build set of scripts/install-deps, and git: the commit the binary
# reports (--version, workflow_proxy_build_info) is read from .git when the
# build context has it (.dockerignore keeps it), else it is "unknown".
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential cmake ninja-build pkg-config git ca-certificates \
      libevent-dev libcurl4-openssl-dev libhiredis-dev libyaml-cpp-dev libxxhash-dev \
      libspdlog-dev libfmt-dev nlohmann-json3-dev libssl-dev libsystemd-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# BUILD_TESTING=OFF: no GoogleTest needed; the upstream simulator still builds
# (the compose demo runs it as a stand-in upstream).
RUN cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF \
 && cmake --build build --target workflow-proxy upstream_sim \
 && strip build/workflow-proxy build/tests/upstream_sim \
 && build/workflow-proxy --version

# --- runtime ----------------------------------------------------------------
FROM ${DEBIAN_IMAGE}
ARG DEBIAN_IMAGE
ARG WFP_VERSION=0.1.0
LABEL org.opencontainers.image.title="workflow-proxy" \
      org.opencontainers.image.description="Caching, coalescing, rate-limiting reverse proxy for the AI Tutor Run Workflow API" \
      org.opencontainers.image.version="${WFP_VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${DEBIAN_IMAGE}"
# The run set of scripts/install-deps (the shared libraries the binary links,
# and the CA certificates the upstream's HTTPS is verified with), plus curl for
# HEALTHCHECK: curl depends on the very libcurl4 the proxy links, so it adds
# only its own small executable, and it speaks HTTP/1.1 exactly like any other
# client (a shell's /dev/tcp would need bash, and hand-written HTTP).
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libevent-core-2.1-7 libevent-extra-2.1-7 libevent-openssl-2.1-7 libcurl4 libhiredis0.14 \
      libyaml-cpp0.7 libxxhash0 libspdlog1.10 libfmt9 libssl3 libsystemd0 ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*
# A fixed numeric user, so Kubernetes' runAsNonRoot can verify it and mounted
# secrets can be made readable to it (fsGroup / file owner 10001).
RUN groupadd --system --gid 10001 workflow-proxy \
 && useradd --system --uid 10001 --gid workflow-proxy --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin workflow-proxy \
 && mkdir -p /etc/workflow-proxy
COPY --from=build /src/build/workflow-proxy /usr/bin/workflow-proxy
# The upstream simulator, for demos and tests only (deploy/compose.yaml).
COPY --from=build /src/build/tests/upstream_sim /usr/lib/workflow-proxy/upstream_sim
COPY LICENSE /usr/share/doc/workflow-proxy/LICENSE

USER 10001:10001
EXPOSE 9460 9464
# /healthz on the admin port: 200 while the event loop answers. The address
# must match admin_listen (0.0.0.0:9464 or 127.0.0.1:9464); with another
# admin port, override the check (docker run --health-cmd, compose healthcheck).
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["curl", "--fail", "--silent", "--show-error", "--max-time", "2", "--output", "/dev/null", "http://127.0.0.1:9464/healthz"]
# SIGTERM drains: the client listener closes, running and queued requests get
# up to shutdown_grace_s (default 30 s) to finish. Give `docker stop` (-t) and
# Kubernetes (terminationGracePeriodSeconds) more than that. SIGHUP reloads.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/workflow-proxy"]
CMD ["--config", "/etc/workflow-proxy/workflow-proxy.yaml"]
