# The redbarn image: frontend and worker in one, chosen by the command.
FROM python:3.11-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir . && rm -rf /src
WORKDIR /
RUN useradd --create-home --uid 1000 redbarn && mkdir -p /var/lib/redbarn && chown redbarn /var/lib/redbarn
USER redbarn
ENTRYPOINT ["tini", "--", "redbarn"]
CMD ["--help"]
