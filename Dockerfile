# The broker as a container image: `docker build -t rentahal .`
# Runs `rentahal serve` as an unprivileged user; deploy/compose.yml starts several.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/rentahal
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install . \
    && useradd --system --create-home --home-dir /var/lib/rentahal rentahal

USER rentahal
# realms.yml and (single-node) llm_broker.db are written here.
WORKDIR /var/lib/rentahal
EXPOSE 5000
# rentahal exits 0 on SIGTERM after a graceful shutdown (docker stop).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/healthz', timeout=3)"]
ENTRYPOINT ["rentahal"]
CMD ["serve", "--host", "0.0.0.0", "--port", "5000"]
