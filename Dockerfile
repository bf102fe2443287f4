# tango-rs as a container, the way autolab-docker runs Tango: the daemon in a container, jobs in
# sibling containers of the host's engine (mount /var/run/docker.sock), Redis beside it (see
# docker-compose.yml and docs/deployment.md).
#
# The binaries are built on the host and copied in; the build context is a directory holding
# `tango` and `autodriver`:
#
#   cargo build --release --locked
#   mkdir -p /tmp/tango-image
#   cp target/release/tango "$(scripts/build-autodriver.sh)" /tmp/tango-image/
#   docker build -f Dockerfile -t tango-rs /tmp/tango-image
#
# BASE must have the glibc tango was built against (or newer) and bash (for the health check);
# Debian bookworm matches a tango built on bookworm. Nothing is pulled when BASE is a local
# image (the tests use the locally built tango-test:latest).
ARG BASE=debian:bookworm-slim
FROM ${BASE}

COPY tango autodriver /usr/local/bin/

# Configuration comes from the environment (TANGO_<SECTION>_<KEY>, and Tango's RESTFUL_KEY,
# DOCKER_REDIS_HOSTNAME, DOCKER_DEPLOYMENT), or from a file mounted at /etc/tango/tango.toml
# and named with TANGO_CONFIG.
ENV TANGO_SERVER_BIND=0.0.0.0 \
    TANGO_SERVER_COURSELABS=/var/lib/tango/courselabs \
    TANGO_VMMS_NAME=localDocker
VOLUME /var/lib/tango/courselabs
EXPOSE 3000

# Healthy when /readyz answers 200: the store answers and the engine is reachable. bash's
# /dev/tcp, so that the image needs no HTTP client.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${TANGO_SERVER_PORT:-3000} && printf 'GET /readyz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]

ENTRYPOINT ["/usr/local/bin/tango"]
CMD ["serve"]
