"""Peak memory of one meta-gradient, for ``metafit bench --memory``.

On a CPU each measurement runs in a fresh interpreter (:func:`peak_memory_mib` starts
it; :func:`probe` measures there): the rise of the process's peak resident set size
(Linux ``VmHWM``, reset through ``/proc/self/clear_refs``) over one meta-gradient after a
warm-up one, with glibc's mmap threshold fixed so that freed tensors are returned at once.
On a GPU it is the CUDA allocator's peak over one meta-gradient, in this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, replace

import torch

from metafit.cli.bench_peers import fresh
from metafit.cli.bench_problems import BenchConfig, synchronize


def _cuda_peak_mib(cfg: BenchConfig, impl: str, seed: int) -> float:
    """Peak CUDA memory (MiB) one meta-gradient of ``impl`` allocates above what is live
    before it (the caching allocator's ``max_memory_allocated``, after a warm-up call).
    metafit with ``cuda_graph``: the peak of its first call, capture included (replays
    allocate nothing; the graph keeps that memory)."""
    fn, _, _ = fresh(cfg, impl, seed)
    if not (cfg.cuda_graph and impl == "metafit"):
        fn()
    synchronize(cfg.device)
    torch.cuda.empty_cache()
    baseline = torch.cuda.memory_allocated(cfg.device)
    torch.cuda.reset_peak_memory_stats(cfg.device)
    fn()
    synchronize(cfg.device)
    return (torch.cuda.max_memory_allocated(cfg.device) - baseline) / 2**20


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def probe(cfg: BenchConfig, impl: str, seed: int) -> float:
    fn, _, _ = fresh(cfg, impl, seed)
    fn()  # warm-up: lazy initialisation, thread pools, replicas
    baseline = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    fn()
    return (_status_kib("VmHWM") - baseline) / 1024.0


def peak_memory_mib(cfg: BenchConfig, impl: str, seed: int = 0, workers: int | None = None
                    ) -> float:
    """Peak memory (MiB) one meta-gradient of ``impl`` adds to its process, measured in a
    fresh interpreter with this process's thread setting (``workers``: metafit's task
    workers, default auto). glibc's mmap threshold is fixed at 64 KiB there, so freed
    tensors leave the resident set at once and its peak tracks the live tensors."""
    if cfg.device.startswith("cuda"):
        return _cuda_peak_mib(cfg, impl, seed)
    if not os.path.exists("/proc/self/clear_refs"):
        return float("nan")
    code = ("import json,sys,torch;from metafit.cli import bench_memory as m;"
            f"torch.set_num_threads({torch.get_num_threads()});"
            "c=m.BenchConfig(**json.loads(sys.argv[1]));"
            "print(m.probe(c, sys.argv[2], int(sys.argv[3])))")
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    cfg = replace(cfg, workers=workers)
    out = subprocess.run([sys.executable, "-c", code, json.dumps(asdict(cfg)), impl, str(seed)],
                         capture_output=True, text=True, check=True, env=env)
    return float(out.stdout.strip().splitlines()[-1])
