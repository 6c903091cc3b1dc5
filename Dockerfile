# vigil runtime: scores every ICU patient every 15 minutes, next to the EHR.
#
#   docker build -t vigil-runtime .
#   docker run -d --name vigil \
#       -v /etc/vigil:/etc/vigil:ro \          # site.toml, models.pub (read-only)
#       -v vigil-state:/var/lib/vigil \        # state store and installed models
#       vigil-runtime
#   docker exec vigil vigil model install /etc/vigil/packages/sepsis-1.2.0
#
# Only the `runtime` extra is installed: onnxruntime, no torch. The ops endpoint
# listens on loopback inside the container (the health check below uses it); set
# VIGIL_OPS__HOST=0.0.0.0 and publish the port to let Prometheus scrape /metrics.

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY src ./src
# constraints.txt pins every transitive dependency (the same versions as the tested venv).
RUN python -m venv /opt/vigil \
    && /opt/vigil/bin/pip install -c constraints.txt ".[runtime]" \
    && /opt/vigil/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"

FROM python:3.11-slim-bookworm
ENV PATH=/opt/vigil/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIGIL_CONFIG=/etc/vigil/site.toml \
    VIGIL_STORE__URL=sqlite:////var/lib/vigil/state.db \
    VIGIL_MODELS__DIR=/var/lib/vigil/models \
    VIGIL_OPS__PORT=9108
RUN groupadd --system --gid 10001 vigil \
    && useradd --system --uid 10001 --gid vigil --home-dir /var/lib/vigil --create-home \
       --shell /usr/sbin/nologin vigil
COPY --from=build /opt/vigil /opt/vigil
USER vigil:vigil
WORKDIR /var/lib/vigil
VOLUME ["/var/lib/vigil"]
EXPOSE 9108
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('VIGIL_OPS__PORT', '9108'), timeout=4)"]
# SIGTERM (docker stop) ends the service cleanly after the running cycle.
STOPSIGNAL SIGTERM
ENTRYPOINT ["vigil", "serve"]
CMD ["--config", "/etc/vigil/site.toml"]
