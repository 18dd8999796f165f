# The cni-cilium agent image for the kind provider (and any Kubernetes cluster):
#   docker build -t cni-cilium-agent:dev -f deploy/agent.Dockerfile .
# bcc and pyroute2 come from the distribution, like on every node; the project is installed
# into a virtualenv that sees them. The host kernel's headers are mounted at run time
# (/lib/modules, /usr/src), since bcc compiles the datapath for the running kernel.
FROM debian:bookworm-slim

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv python3-pip python3-setuptools python3-bpfcc python3-pyroute2 python3-yaml \
      python3-kubernetes iproute2 iptables nftables util-linux ca-certificates \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md ./
COPY impl ./impl
# The eBPF C sources (the agent compiles them at start for the running kernel).
COPY bpf ./bpf

RUN python3 -m venv --system-site-packages /opt/cni-cilium/venv \
 && /opt/cni-cilium/venv/bin/python -m pip install --no-deps --no-build-isolation \
      --disable-pip-version-check --no-cache-dir /src \
 && ln -s /src/bpf /opt/cni-cilium/bpf

ENTRYPOINT ["/opt/cni-cilium/venv/bin/cni-cilium"]
CMD ["agent", "--source", "kube"]
