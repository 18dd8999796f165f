"""The OS/kernel matrix: matrix.yaml, the runner over its entries, the kernel cache and the job
run inside each entry's guest."""
