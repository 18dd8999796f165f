"""The node agent: desired state in, datapath programmed, kept attached, reported."""
