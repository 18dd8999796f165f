"""The node agent: desired state in, datapath programmed, kept attached, reported.

- `inputs`: what it reads (manifest directory, endpoint files) and the change signatures;
- `reconcile`: the `Agent` and its loop (translate, write map differences, self-heal);
- `devices`: the node's devices, attachments and routes (netlink only via `datapath/`);
- `status`: the status document, services view and metrics it serves;
- `main`: `run()`, the process around it (`cni-cilium agent`).
"""
