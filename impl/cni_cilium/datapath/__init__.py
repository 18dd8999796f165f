"""The datapath edge: bcc loading, pinned maps, tc attachments, routes.

Thin wrappers only; what to program is decided by the pure `cni_cilium.translate`.
"""
