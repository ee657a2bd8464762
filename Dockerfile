# The router agent (and, with `emulate`, the provider emulator) as one image.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Metadata first, code after, so editing code does not invalidate more layers than needed.
COPY pyproject.toml README.md ./
COPY router_agent ./router_agent
COPY signals ./signals
COPY config ./config
RUN pip install --no-cache-dir .

# router_agent finds its bundled YAML at <package>/../config, which a non-editable
# install does not carry into site-packages; importing the package from /app keeps
# /app/config next to it (pip install still provides the dependencies and the script).
ENV PYTHONPATH=/app

# Unprivileged at run time; it owns /app because the agent keeps local state in its cwd.
RUN useradd --create-home --uid 10001 router && chown -R router:router /app
USER router

ENTRYPOINT ["router-agent"]
CMD ["run", "--nats-url", "nats://nats:4222"]
