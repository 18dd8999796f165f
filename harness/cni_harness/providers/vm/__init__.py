"""The `vm` provider: full Debian systems under qemu on the local provider's fabric."""
