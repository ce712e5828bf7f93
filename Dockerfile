# The lastmile image: the CLI, the Beam ingest, the PyFlink job (needs a JRE), the Faust
# worker and the API. Built from the same exact pins as `make install`.
FROM python:3.11-slim-bookworm

RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless make \
 && rm -rf /var/lib/apt/lists/*

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 DO_NOT_TRACK=1 \
    VIRTUAL_ENV=/opt/lastmile/.venv PATH=/opt/lastmile/.venv/bin:$PATH \
    LASTMILE_HOME=/data

WORKDIR /opt/lastmile
COPY requirements.lock pyproject.toml README.md ./
RUN python -m venv .venv \
 && .venv/bin/pip install --no-cache-dir "uv==0.13.9" \
 && .venv/bin/uv pip install --python .venv/bin/python --compile-bytecode -r requirements.lock
COPY lastmile ./lastmile
COPY pipelines ./pipelines
COPY schemas ./schemas
COPY dbt ./dbt
COPY feature_store ./feature_store
COPY audiences ./audiences
RUN .venv/bin/uv pip install --python .venv/bin/python --no-deps -e .

VOLUME ["/data"]
ENTRYPOINT ["lastmile"]
CMD ["--help"]
