"""The qemu provider: a matrix entry's kernel booted with virtme-ng over this host's root."""
