"""How a meta-batch runs: per-task loop, worker threads, vmap, CUDA graph."""
