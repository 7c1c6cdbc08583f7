# plugind container image. Build: docker build -t plugind .
# Run (see docs/operations.md, "Container"):
#   docker run -d --name plugind -p 7070:7070 -p 127.0.0.1:7071:7071 \
#     --cap-drop ALL --cap-add SYS_ADMIN --cap-add SYS_CHROOT --cap-add SETPCAP --cap-add NET_ADMIN \
#     --cap-add SETUID --cap-add SETGID --cap-add SYS_PTRACE --cap-add DAC_OVERRIDE --cap-add SYS_RESOURCE \
#     --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
#     --cgroupns=private -v plugind-data:/var/lib/plugind -v ./plugins:/var/lib/plugind/plugins:ro \
#     --env-file secrets.env plugind
# (The capabilities the sandbox's steps need, listed in docs/operations.md; to name the system call
# behind a plugin's seccomp kill, add --cap-add SYSLOG --device /dev/kmsg:/dev/kmsg:r.)
# Docker mounts /sys/fs/cgroup read-only in unprivileged containers: per-plugin cgroup limits then
# need --privileged, or PLUGIND_SANDBOXING__CGROUPS__BACKEND=none plus the container's own --memory
# and --pids-limit (the monitor still samples every plugin through /proc).

# BASE_IMAGE: any Debian-based image with Python 3.11 and its venv module. The default is the
# official python image; `make test-hosts` builds against a bookworm root made from Debian's
# packages (python3, python3-venv), since no image registry is reachable there.
ARG BASE_IMAGE=python:3.11-slim

# --- build stage: compile the wheels that need headers (python-prctl needs libcap-dev) ----------
FROM ${BASE_IMAGE} AS build
# python3-dev only where the base has no Python headers (Debian's python3; the python image has them).
RUN set -e; apt-get update; \
    apt-get install -y --no-install-recommends gcc libc6-dev libcap-dev; \
    if ! python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then \
        apt-get install -y --no-install-recommends python3-dev; \
    fi; \
    rm -rf /var/lib/apt/lists/*
# A current pip: Debian's (23.0) builds sdists such as python-prctl without PEP 517 isolation and
# fails for want of `wheel`.
RUN python3 -m venv /opt/build-venv && /opt/build-venv/bin/pip install --no-cache-dir --upgrade pip
WORKDIR /src
COPY pyproject.toml README.md ./
COPY plugind ./plugind
RUN /opt/build-venv/bin/pip wheel --no-cache-dir --wheel-dir /wheels .

# --- final stage: runtime libraries and the wheels only -----------------------------------------
FROM ${BASE_IMAGE}
# libcap2: python-prctl links it; libseccomp2: pyseccomp loads it; iproute2 and nftables: network
# mode "restricted".
RUN apt-get update \
    && apt-get install -y --no-install-recommends libcap2 libseccomp2 iproute2 nftables \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
# A virtualenv, so the same steps work whether the base's Python is the image's own or Debian's
# (which refuses system-wide pip installs).
RUN python3 -m venv /opt/plugind/.venv \
    && /opt/plugind/.venv/bin/pip install --no-cache-dir --no-index --find-links=/wheels plugind \
    && rm -rf /wheels
ENV PATH=/opt/plugind/.venv/bin:$PATH

RUN groupadd --system plugind && useradd --system --gid plugind --home-dir /var/lib/plugind plugind \
    && mkdir -p /etc/plugind /var/lib/plugind/plugins /var/lib/plugind/data \
    && chown -R plugind:plugind /var/lib/plugind && chmod 0700 /var/lib/plugind/data
COPY config/plugins.toml /etc/plugind/plugins.toml

WORKDIR /var/lib/plugind
ENV PLUGIND_CONFIG=/etc/plugind/plugins.toml \
    PLUGIND_API__LISTEN=0.0.0.0:7070 \
    PLUGIND_API__PROBE_LISTEN=0.0.0.0:7071 \
    PLUGIND_LOGGING__FORMAT=json \
    PYTHONUNBUFFERED=1
# Listening beyond loopback requires a token: pass PLUGIND_API_TOKEN (and PLUGIN_TRUST_KEY) at run
# time from a secret (--env-file, a Kubernetes Secret); never bake them into the image.

# Root on purpose: the sandbox creates namespaces, bind mounts and pivot_root (CAP_SYS_ADMIN),
# writes its cgroup subtree and sets up plugin networking (CAP_NET_ADMIN); plugins themselves run
# with every capability dropped. Without that (a locked-down host), run as the unprivileged user
# with the sandbox off or on user namespaces only:
#   docker run --user plugind -e PLUGIND_SANDBOXING__ENABLED=false ...   (isolation: processes only)
USER root

# 7070: the API. 7071: /health and /ready only (the probe listener), answered even while slow or
# numerous clients hold every API connection; the health check uses it.
EXPOSE 7070 7071
VOLUME ["/var/lib/plugind"]
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7071/health', timeout=2)"]
ENTRYPOINT ["plugind"]
CMD ["serve"]
