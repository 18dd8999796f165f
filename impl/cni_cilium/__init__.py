"""cni-cilium: a cluster network module with an eBPF datapath that replaces kube-proxy."""

__version__ = "0.1.0"
