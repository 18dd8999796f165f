"""The local provider: nodes are network namespaces on this kernel (a supervisor per node, a
nodeinit as PID 1, a bridge fabric), with their addressing plan and source guard."""
