# A stand-in for the official redis:7 image, for machines that cannot pull from a registry (the
# compose smoke test builds it on its local debootstrap base). It runs Debian's Redis 7 the way
# docker-compose.yml runs the official image: `redis-server ARGS...` as the command, data in /data.
#   docker build -f docker/redis-local.Dockerfile --build-arg BASE_IMAGE=... -t ebmm-local/redis:7 docker
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
# Debian bookworm's redis 7.0; the smoke script passes the version apt offers today.
ARG REDIS_VERSION=5:7.0.15-1~deb12u10
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# uid/gid 999 as in the official image; Debian's postinst reuses an existing redis user.
RUN groupadd --system --gid 999 redis \
 && useradd --system --no-log-init --uid 999 --gid redis --home-dir /var/lib/redis --no-create-home \
            --shell /usr/sbin/nologin redis \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      "redis-server=${REDIS_VERSION}" "redis-tools=${REDIS_VERSION}" \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /data \
 && chown redis:redis /data
WORKDIR /data
USER 999:999
EXPOSE 6379
HEALTHCHECK --interval=5s --timeout=3s --retries=10 CMD ["redis-cli", "ping"]
CMD ["redis-server", "--dir", "/data"]
