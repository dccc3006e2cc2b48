"""Run many ``benchmarks/text.py`` rows at once on one GPU, under a deadline.

    python benchmarks/gpu/text_jobs.py --data-root DATA --text-model MODEL --out DIR \
        --slots 12 --deadline 450 --budget 75 --results OUT/text_rows.jsonl

Each job is one row of protocol A (``ALGORITHM:SCOPE`` at one shot count) or protocol B
(one algorithm and scope at one K and seed), run as its own ``text.py`` process with
``--device cuda``. Up to ``--slots`` processes share the GPU (a MiniLM meta-step is a
stream of small kernels, so one process leaves the GPU mostly idle). Jobs start in the
listed order (the comparisons the issue asks for first); at ``--deadline`` seconds the
unfinished ones are stopped and reported as not run. Every finished row is appended to
``--results`` as one JSON line as soon as it exists; failures go to ``--failures`` with
the tail of their output. Wall-clock figures of rows measured this way are shared-GPU
figures (``slots`` processes at once), stated as such in RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent  # benchmarks/
SCOPES_A = {
    "protonet": ["full", "top", "lora"],  # ProtoNet has no head to adapt
    "finetune": ["full", "top", "lora", "head"],
    "maml": ["lora", "top", "full", "head"],
    "anil": ["full", "top", "lora", "head"],
    "fomaml": ["lora", "top", "full", "head"],
    "reptile": ["lora", "top", "full", "head"],
}


def jobs(args: argparse.Namespace) -> list[list[str]]:
    """The command-line tails of every job, most important first."""
    a: list[list[str]] = [["A", "--rows", "linear_probe:head", "--shots", "1", "5"]]
    first = [("protonet", "full"), ("finetune", "full"), ("maml", "lora"), ("protonet", "lora"),
             ("finetune", "lora"), ("maml", "top"), ("protonet", "top"), ("finetune", "top"),
             ("anil", "full"), ("maml", "full"), ("finetune", "head"), ("maml", "head")]
    order = first + [(al, sc) for al, scs in SCOPES_A.items() for sc in scs
                     if (al, sc) not in first]
    for al, sc in order:
        for shots in ("1", "5"):
            a.append(["A", "--rows", f"{al}:{sc}", "--shots", shots])
    b: list[list[str]] = []
    for al, sc in (("protonet", "full"), ("finetune", "full")):
        for k in ("5", "10"):
            for seed in ("0", "1", "2", "3", "4"):
                b.append(["B", "--rows", f"{al}:{sc}", "--k", k, "--seeds", seed])
    # interleave: the B rows are few and short, start them among the A rows
    out: list[list[str]] = []
    while a or b:
        out += a[:3]
        a = a[3:]
        out += b[:1]
        b = b[1:]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--text-model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--slots", type=int, default=12)
    p.add_argument("--deadline", type=float, default=450.0)
    p.add_argument("--budget", type=float, default=75.0, help="meta-training seconds per row")
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--steps", type=int, default=5, help="test-time inner steps")
    p.add_argument("--results", required=True)
    p.add_argument("--failures", required=True)
    p.add_argument("--only", nargs="*", help="run only jobs whose row is listed")
    p.add_argument("--device", default="cuda")
    p.add_argument("--val-every", default="50")
    args = p.parse_args()
    start = time.monotonic()
    todo = jobs(args)
    if args.only:
        todo = [j for j in todo if j[2] in args.only]
    out = Path(args.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    running: dict[int, tuple[subprocess.Popen[bytes], list[str], Path, float]] = {}
    done_files: set[Path] = set()
    results, failures = Path(args.results), Path(args.failures)
    n = 0

    def harvest() -> None:
        for f in sorted(out.rglob("benchmark.json")):
            if f not in done_files:
                done_files.add(f)
                with results.open("a") as fh:
                    fh.write(json.dumps({**json.loads(f.read_text()), "run": str(
                        f.parent.relative_to(out))}) + "\n")

    while todo or running:
        now = time.monotonic() - start
        for pid, (proc, job, log, t0) in list(running.items()):
            if proc.poll() is not None:
                del running[pid]
                if proc.returncode != 0:
                    tail = log.read_text(errors="replace")[-3000:]
                    with failures.open("a") as fh:
                        fh.write(f"## {' '.join(job)} (rc {proc.returncode}, "
                                 f"{time.monotonic() - start - t0:.0f} s)\n{tail}\n\n")
                print(f"[{now:6.0f} s] done rc={proc.returncode} {' '.join(job)}", flush=True)
        harvest()
        if now > args.deadline:
            for proc, job, _, _ in running.values():
                proc.kill()
                with failures.open("a") as fh:
                    fh.write(f"## {' '.join(job)}: stopped at the deadline\n\n")
            for job in todo:
                with failures.open("a") as fh:
                    fh.write(f"## {' '.join(job)}: not started before the deadline\n\n")
            break
        while todo and len(running) < args.slots:
            job = todo.pop(0)
            n += 1
            log = out / "logs" / f"job{n:03d}.log"
            cmd = [sys.executable, str(HERE / "text.py"), *job, "--data-root", args.data_root,
                   "--text-model", args.text_model, "--device", args.device, "--out", str(out),
                   "--budget", str(args.budget), "--iterations", "100000",
                   "--episodes", str(args.episodes), "--steps", str(args.steps),
                   "--val-every", args.val_every, "--val-episodes", "30", "--threads", "1",
                   "--quiet",
                   "--results", str(out / "logs" / f"results{n:03d}.md"),
                   "--results-dir", str(out / "logs")]
            proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
            running[proc.pid] = (proc, job, log, now)
            print(f"[{now:6.0f} s] start {' '.join(job)}", flush=True)
        time.sleep(2)
    harvest()
    print(f"finished {len(done_files)} rows in {time.monotonic() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
