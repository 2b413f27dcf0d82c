# One image for every raftsync role (node, web, worker); the compose file picks the command.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
# The plugin itself (its dependencies are the pins above): entry points for the raft:// result
# backend, the `celery raftsync` command and the `raftsync` console script.
RUN pip install --no-cache-dir --no-deps .
RUN useradd --system --home /app raftsync && mkdir -p /data && chown raftsync /data
USER raftsync
