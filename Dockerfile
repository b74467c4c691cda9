# hitl-api image: the service alone; the monitoring stack lives in docker-compose.yml.
FROM python:3.11-slim AS build
WORKDIR /src
COPY setup.cfg pyproject.toml README.md ./
COPY service ./service
COPY telemetry ./telemetry
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
# hitl_build_info{commit=...}: docker build --build-arg HITL_BUILD_COMMIT=$(git rev-parse --short HEAD)
ARG HITL_BUILD_COMMIT=unknown
ENV HITL_BUILD_COMMIT=${HITL_BUILD_COMMIT} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HITL_HOST=0.0.0.0 \
    HITL_PORT=8000 \
    HITL_LOG_FORMAT=json
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && useradd --system --uid 10001 --home-dir /app --create-home hitl
USER hitl
WORKDIR /app
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/api/health/ready', timeout=2).status == 200 else 1)"
ENTRYPOINT ["hitl-api"]
CMD ["serve"]
