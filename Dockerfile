# zoo serve, CPU, JAX backend, on a model repository mounted at /models, as a non-root user.
#   docker build -t zoo .
#   docker run --rm -p 8500:8500 -p 8000:8000 -p 9100:9100 -v "$PWD/models:/models:ro" zoo
# gRPC on 8500, the OpenAI-compatible HTTP API on 8000, Prometheus metrics on 9100.
# Extra flags replace CMD: docker run ... zoo /models --host 0.0.0.0 --tls-cert /certs/tls.crt ...
# For a GPU, start from a CUDA image and install "jax[cuda12]" (or a CUDA torch and
# KERAS_BACKEND=torch) instead of jax: see the README's "Installing for a GPU".
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    KERAS_BACKEND=jax HOME=/tmp KERAS_HOME=/tmp/keras

WORKDIR /opt/zoo
COPY pyproject.toml README.md ./
COPY zoo ./zoo
COPY cli ./cli
COPY server ./server
COPY protos ./protos

# keras-hub declares tensorflow-text, which serving does not need: installed without its
# dependencies, as the README's GPU install does, so the image carries no TensorFlow.
RUN pip install "jax>=0.4.30" \
 && pip install --no-deps "keras-hub>=0.32" \
 && pip install "keras>=3.15.1" absl-py packaging regex rich kagglehub kagglesdk "sentencepiece>=0.2" \
        "tokenizers>=0.20" "numpy>=1.26" h5py "click>=8.1" "grpcio>=1.85.1" "grpcio-health-checking>=1.85.1" \
        "grpcio-reflection>=1.85.1" "protobuf>=7.35.1,<8" "prometheus-client>=0.20" "aiohttp>=3.9" "sacrebleu>=2.4" \
        "safetensors>=0.4" "huggingface_hub>=0.24" \
 && pip install --no-deps . \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin zoo

USER 10001
EXPOSE 8500 8000 9100
VOLUME ["/models"]
# Health over the gRPC health service (what Kubernetes' grpc probes call).
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s \
    CMD ["python", "-c", "import grpc, sys; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; c = grpc.insecure_channel('127.0.0.1:8500'); sys.exit(g.HealthStub(c).Check(h.HealthCheckRequest(), timeout=4).status != h.HealthCheckResponse.SERVING)"]
ENTRYPOINT ["zoo", "serve"]
CMD ["/models", "--host", "0.0.0.0", "--port", "8500", "--http-port", "8000", "--metrics-port", "9100", "--grace-period", "20"]
