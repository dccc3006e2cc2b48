"""The options of ``metafit bench``, in a module that imports no torch (so that
``metafit --help`` stays fast)."""

from __future__ import annotations

import argparse

__all__ = ["PEER_NAMES", "build_parser"]

#: The peers ``metafit bench`` compares with (:data:`metafit.cli.bench_peers.PEERS`).
PEER_NAMES = ("higher", "torchopt", "loop")


def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``metafit bench``."""
    parser.add_argument("--algorithms", nargs="+", default=None,
                        help="subset of maml fomaml anil reptile protonet (default: all)")
    parser.add_argument("--problems", nargs="+", default=None,
                        help="subset of omniglot sinusoid (default: both)")
    parser.add_argument("--steps", nargs="+", type=int, default=None,
                        help="inner steps to run (default: 1 5)")
    parser.add_argument("--meta-batch", type=int, default=None, help="tasks per batch (32)")
    parser.add_argument("--peers", nargs="+", default=list(PEER_NAMES),
                        help="peers to compare with (default: higher torchopt loop)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median)")
    parser.add_argument("--memory", action="store_true",
                        help="also measure peak memory (a subprocess per implementation)")
    parser.add_argument("--quick", action="store_true", help="K=1, meta-batch 8: a smoke run")
    parser.add_argument("--device", default="cpu",
                        help="cpu or cuda[:N]; GPU timings synchronise before reading the "
                             "clock and peak memory is the CUDA allocator's")
    parser.add_argument("--batching", default="auto", choices=["auto", "loop", "vmap"],
                        help="metafit's task batching for algorithms with a vmapped form "
                             "(default: auto: on a CPU vmap for models without convolutions, "
                             "on a GPU vmap wherever it can run)")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="replay metafit's meta-gradient as a CUDA graph "
                             "(metafit.execution.cuda_graphs; MAML, FOMAML, ANIL on CUDA)")
    parser.add_argument("--tf32", action="store_true",
                        help="on CUDA, time float32 with TF32 convolutions and matrix "
                             "products (PyTorch's cuDNN default) for every implementation; "
                             "agreement is still checked in float64")
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="on CUDA, let cuDNN time its convolution algorithms and keep the "
                             "fastest (torch.backends.cudnn.benchmark), for every "
                             "implementation")
    parser.add_argument("--json", action="store_true",
                        help="print the rows as one line of JSON (schema: docs/cli-json.md); "
                        "the progress lines and the table go to stderr")
    parser.add_argument("--json-out", metavar="FILE", default=None,
                        help="also write the rows as JSON to FILE, after every row (an "
                        "interrupted run keeps what it measured)")
    return parser
