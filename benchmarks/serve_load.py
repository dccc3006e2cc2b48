"""Load test of ``metafit serve`` on loopback: concurrent predictions while adaptations run.

    python benchmarks/serve_load.py                      # 1 and 2 adaptation workers
    python benchmarks/serve_load.py --run runs/maml      # an existing image run
    python benchmarks/serve_load.py --quick              # a smoke run, results not written
    python benchmarks/serve_load.py --attack --workers 1 # predictions under attack

Without ``--run`` it first meta-trains a throwaway Omniglot 5-way 1-shot MAML run (the
shipped ``omniglot_5w1s_maml`` recipe, conv4-64, 28x28; a few iterations: the weights do
not matter for speed). For each ``--workers`` setting it starts the real command line,
``metafit serve RUN --host 127.0.0.1 --port 0`` with an API key, on loopback only, makes
one adaptation to predict with, measures 50 predictions one at a time (the latency of
a request that waits for nothing), then runs two phases with every request sent at once
(httpx, one connection each):

1. **predict only**: ``--predicts`` (200) concurrent ``POST /v1/adaptations/{id}/predict``
   of one Omniglot image each;
2. **predict + adapt**: the same 200 predictions and ``--adaptations`` (10) concurrent
   ``POST /v1/adaptations`` of a 5-way 5-shot support set (25 Omniglot PNGs, the run's
   evaluation inner steps) together.

Every response must be a 2xx (the script exits 1 otherwise). Reported: client-side p50 /
p99 latency, predictions/s over the phase, and the server's own mean adaptation time
(``/metrics``). The block goes to ``--results`` between ``<!-- serve_load:start -->`` and
``<!-- serve_load:end -->``, the phases' latencies to ``serve_load.json`` (``serve_attack.json``)
in ``--results-dir`` (default ``benchmarks/results/<today>/``). Client and server share the
machine's cores.

``--attack`` measures instead the same 200 predictions alone and then while an attack
runs beside them (in one run, side by side): ``--bombers`` loops posting a pixel bomb
(a 17 KB 1-bit PNG declaring 12000 x 12000 pixels, with the API key) and ``--flooders``
loops sending requests with random 8-letter methods and no key, each loop pausing
``--attack-pause`` s between requests. Reported: prediction p50 / p99 with and without
the attack, the attack's requests by status, and the size of ``/metrics`` (bytes and
series) before, 1 s into the attack and after it. Acceptance (issue 24): p99 under attack
within 2x of p99 without; as many series after the attack as 1 s into it (bounded).
Block ``serve_attack``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import io
import itertools
import os
import random
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from common import OMNIGLOT, add_output_options, load_average, machine, publish
from PIL import Image

from metafit.server.runner import torch_threads

KEY = "serve-load-benchmark-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@dataclass
class Phase:
    """Latencies (s) of one phase's requests by kind, and its wall time."""

    name: str
    workers: int
    threads: int
    predict: list[float]
    adapt: list[float]
    wall: float
    errors: int
    adapt_mean_server: float | None = None


def omniglot_pngs(root: Path, characters: int, drawers: int) -> list[list[str]]:
    """``characters`` x ``drawers`` base64 PNGs from the first Omniglot zip in ``root``."""
    zips = sorted(root.glob("images_background*.zip"))
    if not zips:
        raise SystemExit(f"no Omniglot zip in {root} (--data-root)")
    by_char: dict[str, list[str]] = {}
    with zipfile.ZipFile(zips[0]) as z:
        for name in sorted(n for n in z.namelist() if n.endswith(".png")):
            char = name.rsplit("/", 1)[0]
            if len(by_char.get(char, [])) < drawers:
                by_char.setdefault(char, []).append(base64.b64encode(z.read(name)).decode())
    full = [v for v in by_char.values() if len(v) == drawers]
    return full[:characters]


def train_run(out: Path, data_root: Path, iterations: int) -> Path:
    """A few meta-training iterations of the shipped Omniglot 5w1s MAML recipe."""
    cmd = [sys.executable, "-m", "metafit.cli", "train", "omniglot_5w1s_maml",
           f"data_root={data_root}", f"iterations={iterations}", f"val_every={iterations}",
           "val_episodes=4", f"checkpoint_every={iterations}", "meta_batch=8",
           "--out", str(out), "--no-progress"]
    subprocess.run(cmd, check=True, timeout=900, stdout=subprocess.DEVNULL)
    return out


class Server:
    """``metafit serve`` in a subprocess on 127.0.0.1 (a free port, read from its log)."""

    def __init__(self, run: Path, state: Path, workers: int, queue: int,
                 threads: int | None) -> None:
        env = {**os.environ, "METAFIT_API_KEYS": KEY}
        self.cmd = [sys.executable, "-m", "metafit.cli", "serve", str(run), "--host",
                    "127.0.0.1", "--port", "0", "--state-dir", str(state), "--workers",
                    str(workers), "--queue", str(queue)]
        if threads:
            self.cmd += ["--threads", str(threads)]
        self.proc = subprocess.Popen(self.cmd, env=env, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        deadline = time.monotonic() + 120
        self.url = ""
        while not self.url:
            line = self.proc.stderr.readline()
            if not line or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start: {line}")
            found = re.search(r" at (http://127\.0\.0\.1:\d+)", line)
            self.url = found.group(1) if found else ""
        # keep draining its log so that the pipe never fills up
        self.drain = threading.Thread(target=self.proc.stderr.read, daemon=True)
        self.drain.start()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


async def adaptation_seconds(client: httpx.AsyncClient) -> tuple[float, float]:
    """The server's total adaptation seconds and count so far (from ``/metrics``)."""
    text = (await client.get("/metrics", headers=AUTH)).text
    values = []
    for name in ("sum", "count"):
        found = re.search(rf"^metafit_adaptation_duration_seconds_{name} (\S+)$", text, re.M)
        values.append(float(found.group(1)) if found else 0.0)
    return values[0], values[1]


async def timed(client: httpx.AsyncClient, path: str, body: dict[str, Any]
                ) -> tuple[float, int]:
    start = time.perf_counter()
    r = await client.post(path, json=body, headers=AUTH)
    return time.perf_counter() - start, r.status_code


async def phase(url: str, name: str, workers: int, threads: int, adaptation_id: str,
                queries: list[dict[str, Any]], support: dict[str, Any], predicts: int,
                adaptations: int, repeats: int) -> Phase:
    """``repeats`` rounds of ``predicts`` predictions and ``adaptations`` adaptations, all
    of a round sent at once; latencies pooled over the rounds, walls summed."""
    limits = httpx.Limits(max_connections=predicts + adaptations + 10,
                          max_keepalive_connections=0)
    path = f"/v1/adaptations/{adaptation_id}/predict"
    result = Phase(name, workers, threads, [], [], 0.0, 0)
    statuses: set[int] = set()
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        before = await adaptation_seconds(client)
        for _ in range(repeats):
            jobs = [timed(client, path, queries[i % len(queries)]) for i in range(predicts)]
            jobs += [timed(client, "/v1/adaptations", support) for _ in range(adaptations)]
            start = time.perf_counter()
            results = await asyncio.gather(*jobs)
            result.wall += time.perf_counter() - start
            result.predict += [t for t, _ in results[:predicts]]
            result.adapt += [t for t, _ in results[predicts:]]
            bad = [status for _, status in results if not 200 <= status < 300]
            result.errors += len(bad)
            statuses |= set(bad)
        after = await adaptation_seconds(client)
    if result.errors:
        print(f"{name}: {result.errors} error responses, statuses {sorted(statuses)}",
              file=sys.stderr)
    done = after[1] - before[1]
    result.adapt_mean_server = (after[0] - before[0]) / done if done else None
    return result


async def sequential(url: str, workers: int, threads: int, adaptation_id: str,
                     queries: list[dict[str, Any]], count: int) -> Phase:
    """``count`` predictions one after another on one keep-alive connection: the latency
    of a request that waits for nothing."""
    result = Phase("one at a time", workers, threads, [], [], 0.0, 0)
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        path = f"/v1/adaptations/{adaptation_id}/predict"
        start = time.perf_counter()
        for i in range(count):
            seconds, status = await timed(client, path, queries[i % len(queries)])
            result.predict.append(seconds)
            result.errors += not 200 <= status < 300
        result.wall = time.perf_counter() - start
    return result


def payloads(data_root: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A 5-way 5-shot support body of Omniglot PNGs and 25 one-image prediction bodies."""
    pngs = omniglot_pngs(data_root, 5, 10)
    support = {"examples": [{"image": img, "label": f"char{c}"}
                            for c, imgs in enumerate(pngs) for img in imgs[:5]]}
    queries = [{"inputs": [{"image": img}]} for imgs in pngs for img in imgs[5:]]
    return support, queries


async def adapt_and_warm(client: httpx.AsyncClient, support: dict[str, Any],
                         queries: list[dict[str, Any]]) -> str:
    """Adapt the served run to ``support``, warm it up with 5 predictions; the id."""
    r = await client.post("/v1/adaptations", json=support, headers=AUTH)
    r.raise_for_status()
    adaptation_id: str = r.json()["id"]
    for q in queries[:5]:
        (await client.post(f"/v1/adaptations/{adaptation_id}/predict", json=q,
                           headers=AUTH)).raise_for_status()
    return adaptation_id


def pixel_bomb(side: int = 12000) -> dict[str, Any]:
    """A prediction body holding one 1-bit ``side`` x ``side`` PNG (~17 KB)."""
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, "PNG")
    return {"inputs": [{"image": base64.b64encode(buf.getvalue()).decode()}]}


async def metrics_size(client: httpx.AsyncClient) -> tuple[int, int]:
    """Bytes and sample lines (series) of ``/metrics``."""
    text = (await client.get("/metrics", headers=AUTH)).text
    return len(text), sum(1 for line in text.splitlines() if line and line[0] != "#")


async def attack(url: str, adaptation_id: str, args: argparse.Namespace,
                 stop: asyncio.Event, statuses: collections.Counter[str]) -> None:
    """Pixel bombs and a random-method flood until ``stop`` is set."""
    bomb = pixel_bomb()
    limits = httpx.Limits(max_connections=args.bombers + args.flooders + 2)

    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        async def bombs() -> None:
            while not stop.is_set():
                r = await client.post(f"/v1/adaptations/{adaptation_id}/predict", json=bomb,
                                      headers=AUTH)
                statuses[f"bomb {r.status_code}"] += 1
                await asyncio.sleep(args.attack_pause)

        async def flood(seed: int) -> None:
            rng = random.Random(seed)
            while not stop.is_set():
                method = "".join(rng.choices("ABCDEFGHIJKLMNOPQRSTUVWXYZ", k=8))
                r = await client.request(method, rng.choice(["/healthz", "/v1/predict",
                                                             "/metrics", "/nowhere"]))
                statuses[f"flood {r.status_code}"] += 1
                await asyncio.sleep(args.attack_pause)

        await asyncio.gather(*[bombs() for _ in range(args.bombers)],
                             *[flood(i) for i in range(args.flooders)])


async def bench_attack(run: Path, state_root: Path, args: argparse.Namespace
                       ) -> tuple[list[Phase], list[str]]:
    """Predictions alone, then beside :func:`attack`, on one server per worker count."""
    support, queries = payloads(Path(args.data_root))
    phases, rows = [], []
    for workers in args.workers:
        server = Server(run, state_root / f"attack{workers}", workers, 0, None)
        threads = torch_threads(workers)
        try:
            async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
                adaptation_id = await adapt_and_warm(client, support, queries)
                phases.append(await phase(server.url, "predict only", workers, threads,
                                          adaptation_id, queries, support, args.predicts, 0,
                                          args.repeats))
                await metrics_size(client)  # so that its own series exist before
                before = await metrics_size(client)
                stop, statuses = asyncio.Event(), collections.Counter[str]()
                attacker = asyncio.create_task(attack(server.url, adaptation_id, args, stop,
                                                      statuses))
                await asyncio.sleep(1.0)  # the attack is under way: its series exist
                during = await metrics_size(client)
                phases.append(await phase(server.url, "predict + attack", workers, threads,
                                          adaptation_id, queries, support, args.predicts, 0,
                                          args.repeats))
                stop.set()
                await attacker
                after = await metrics_size(client)
            sent = ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items()))
            ratio = pct(phases[-1].predict, 0.99) / pct(phases[-2].predict, 0.99)
            grew = "no" if during[1] == after[1] else f"yes (+{after[1] - during[1]})"
            rows.append(f"| {workers} | {sent} | " + " | ".join(
                f"{b} B, {n} series" for b, n in (before, during, after))
                + f" | {grew} | {ratio:.2f} |")
        finally:
            server.stop()
    return phases, rows


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def ms(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{pct(values, 0.5) * 1e3:.0f} / {pct(values, 0.99) * 1e3:.0f}"


def table(phases: list[Phase]) -> str:
    rows = ["| workers | torch threads | phase | predict p50 / p99 (ms) | predictions/s | "
            "adaptation p50 / p99 (ms) | server adaptation mean (ms) | wall (s) | errors |",
            "|---|---|---|---|---|---|---|---|---|"]
    for p in phases:
        server = f"{p.adapt_mean_server * 1e3:.0f}" if p.adapt_mean_server else "-"
        rows.append(f"| {p.workers} | {p.threads} | {p.name} | {ms(p.predict)} | "
                    f"{len(p.predict) / p.wall:.0f} | {ms(p.adapt)} | {server} | "
                    f"{p.wall:.2f} | {p.errors} |")
    return "\n".join(rows)


async def bench(run: Path, state_root: Path, args: argparse.Namespace) -> list[Phase]:
    support, queries = payloads(Path(args.data_root))
    phases = []
    for workers, threads in itertools.product(args.workers, args.threads):
        queue = max(0, args.adaptations - workers)  # all adaptations admitted, none 503
        server = Server(run, state_root / f"w{workers}t{threads}", workers, queue,
                        threads or None)
        threads = threads or torch_threads(workers)  # the server's default
        try:
            async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
                adaptation_id = await adapt_and_warm(client, support, queries)
            phases.append(await sequential(server.url, workers, threads, adaptation_id,
                                           queries, args.predicts // 4))
            for name, adaptations in [("predict only", 0), ("predict + adapt",
                                                            args.adaptations)]:
                phases.append(await phase(server.url, name, workers, threads, adaptation_id,
                                          queries, support, args.predicts, adaptations,
                                          args.repeats))
        finally:
            server.stop()
    return phases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="an image run to serve (default: train a throwaway "
                        "Omniglot MAML run)")
    parser.add_argument("--data-root", default=str(OMNIGLOT), help="Omniglot zips")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="adaptation worker counts to compare")
    parser.add_argument("--threads", type=int, nargs="+", default=[0],
                        help="torch threads of the server to compare (0: its default, "
                        "cores / (workers + 1))")
    parser.add_argument("--predicts", type=int, default=200)
    parser.add_argument("--adaptations", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="rounds per phase (latencies "
                        "pooled)")
    parser.add_argument("--iterations", type=int, default=20,
                        help="meta-training iterations of the throwaway run")
    parser.add_argument("--attack", action="store_true", help="predictions alone and beside "
                        "pixel bombs and a random-method flood (block serve_attack)")
    parser.add_argument("--bombers", type=int, default=4, help="--attack: pixel-bomb loops")
    parser.add_argument("--flooders", type=int, default=4, help="--attack: random-method "
                        "loops")
    parser.add_argument("--attack-pause", type=float, default=0.01, help="--attack: seconds "
                        "each attack loop waits between its requests")
    parser.add_argument("--quick", action="store_true", help="fewer requests, no results")
    add_output_options(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.predicts, args.adaptations, args.iterations, args.repeats = 20, 2, 2, 1
    load = load_average()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.run) if args.run else train_run(Path(tmp) / "run",
                                                        Path(args.data_root), args.iterations)
        if args.attack:
            phases, rows = asyncio.run(bench_attack(run, Path(tmp), args))
        else:
            phases = asyncio.run(bench(run, Path(tmp), args))
    seconds = time.perf_counter() - started
    command = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/serve_load.py",
                                                             *(argv or sys.argv[1:])])
    source = (f"`{args.run}`" if args.run else "the shipped omniglot_5w1s_maml recipe "
              f"(conv4-64, 28x28) after {args.iterations} iterations")
    block = "\n".join([
        f"Machine: {machine().rsplit(', torch', 1)[0]}; load average before: {load}. "
        f"Command: `{command}` ({seconds / 60:.1f} min). Run: {source}. Each phase is "
        f"{args.repeats} rounds, each sending all its requests at once over loopback (a new "
        f"connection each): {args.predicts} predictions (one 105x105 Omniglot PNG each) "
        f"alone, then together with {args.adaptations} adaptations (5-way 5-shot: 25 PNGs, "
        f"the run's evaluation inner steps); first, {args.predicts // 4} predictions one at "
        "a time on one keep-alive connection. Latencies are the client's, pooled over the "
        "rounds; predictions/s = predictions / wall time; the server adaptation mean is "
        "its own timing (`/metrics`), without queueing. The adaptation queue is sized so "
        "that none is refused. Client and server share the cores.",
        "",
        table(phases),
    ])
    if args.attack:
        block = "\n".join([
            f"Machine: {machine().rsplit(', torch', 1)[0]}; load average before: {load}. "
            f"Command: `{command}` ({seconds / 60:.1f} min). Run: {source}. "
            f"{args.predicts} predictions sent at once ({args.repeats} rounds, latencies "
            "pooled), first alone, then while an attack runs beside them: "
            f"{args.bombers} loops posting a pixel bomb (a 1-bit 12000x12000 PNG, ~17 KB, "
            f"with the key) and {args.flooders} loops sending random 8-letter methods "
            f"without a key, each pausing {args.attack_pause} s between requests. "
            "Client, attacker and server share the cores.", "", table(phases), "",
            "| workers | attack requests by status | /metrics before | 1 s into the attack "
            "| after | series grew during the attack | p99 attack / alone |",
            "|---|---|---|---|---|---|---|", *rows])
    print(block)
    errors = sum(p.errors for p in phases)
    if not args.quick and not errors:
        name, title = ("serve_attack", "HTTP serving under attack") if args.attack else \
            ("serve_load", "HTTP serving under load")
        publish(args, name, f"{title} (`benchmarks/serve_load.py"
                f"{' --attack' if args.attack else ''}`)", block, [asdict(p) for p in phases])
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
