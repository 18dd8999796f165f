"""Small programs the suites run inside pods and namespaces (no project imports)."""
