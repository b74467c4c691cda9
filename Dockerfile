# hitl-api image: the service alone; the monitoring stack lives in docker-compose.yml.
# Dependencies come from the lock file (exact versions, hashes checked; `make lock`),
# the service from its own wheel, so an image built today and one built next month
# run the same code. tests/packaging/test_wheel.py performs the same steps.
FROM python:3.11-slim AS build
WORKDIR /src
COPY setup.cfg pyproject.toml README.md ./
COPY service ./service
COPY telemetry ./telemetry
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
# hitl_build_info{commit=...}: docker build --build-arg HITL_BUILD_COMMIT=$(git rev-parse --short HEAD)
ARG HITL_BUILD_COMMIT=unknown
ENV HITL_BUILD_COMMIT=${HITL_BUILD_COMMIT} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HITL_HOST=0.0.0.0 \
    HITL_PORT=8000 \
    HITL_LOG_FORMAT=json
COPY ops/requirements/runtime.lock.txt /tmp/runtime.lock.txt
COPY --from=build /wheels /wheels
# pip check: a lock that no longer satisfies setup.cfg fails the build, not the first request.
RUN pip install --no-cache-dir --require-hashes --no-deps -r /tmp/runtime.lock.txt \
    && pip install --no-cache-dir --no-deps /wheels/*.whl \
    && pip check \
    && rm -rf /wheels /tmp/runtime.lock.txt \
    && useradd --system --uid 10001 --home-dir /app --create-home hitl
USER hitl
WORKDIR /app
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/api/health/ready', timeout=2).status == 200 else 1)"
ENTRYPOINT ["hitl-api"]
CMD ["serve"]
