# The broker image used by helm/broker. Not built in CI (this project's CI machine has no
# container engine); `docker build -t broker:0.1.0 .` builds it.
FROM python:3.11-slim
RUN useradd --uid 10001 --create-home broker
WORKDIR /app
COPY pyproject.toml README.md ./
COPY broker ./broker
RUN pip install --no-cache-dir ".[server,client,vault]" && rm -rf /root/.cache
USER 10001
ENTRYPOINT ["broker"]
CMD ["serve", "--config", "/etc/broker/broker.yaml"]
