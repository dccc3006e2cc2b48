"""The ``serve`` verb: a run or an adapted model behind the HTTP API (``serve`` extra)."""

from __future__ import annotations

import argparse
from typing import Any

from metafit.cli.options import add_checkpoint_option, add_classifier_option, add_verb

__all__ = ["add_serve_parser"]


def _cmd_serve(args: argparse.Namespace) -> int:
    from pathlib import Path

    try:
        from metafit.server import ServerSettings, load_api_keys, serve
    except ImportError as e:
        raise ValueError(f"`metafit serve` needs the serve extra: pip install "
                         f"'metafit[serve]' ({e})") from e

    settings = ServerSettings(
        target=Path(args.target), state_dir=args.state_dir and Path(args.state_dir),
        model_dir=args.model and Path(args.model), checkpoint=args.checkpoint,
        classifier=args.classifier, classifier_penalty=args.classifier_penalty,
        api_keys=load_api_keys(args.api_key_file), max_body_bytes=args.max_body_bytes,
        max_examples=args.max_examples, max_inputs=args.max_inputs, max_steps=args.max_steps,
        steps=args.steps, workers=args.workers, queue=args.queue, cache_size=args.cache_size,
        max_image_pixels=args.max_image_pixels, max_request_pixels=args.max_request_pixels,
        header_timeout=args.header_timeout, body_timeout=args.body_timeout,
        keep_alive_timeout=args.keep_alive_timeout, max_connections=args.max_connections)
    serve(settings, host=args.host, port=args.port, insecure_no_auth=args.insecure_no_auth,
          threads=args.threads)
    return 0


def _serve_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="RUN_OR_MODEL", help="a run directory (adapts to posted "
                   "support sets) or an adapted model directory (predicts only)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default "
                   "127.0.0.1; another needs API keys or --insecure-no-auth)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free)")
    p.add_argument("--api-key-file", help="file of API keys, one per line (also: "
                   "METAFIT_API_KEYS=k1,k2); requests need 'Authorization: Bearer KEY' or "
                   "'X-API-Key: KEY'")
    p.add_argument("--insecure-no-auth", action="store_true", help="allow serving without "
                   "API keys on a non-loopback address")
    p.add_argument("--state-dir", help="where adaptations are kept (default RUN/adaptations)")
    p.add_argument("--model", help="an adapted model for POST /v1/predict next to a run")
    add_checkpoint_option(p)
    add_classifier_option(p, "fit this head to posted support sets instead of the recipe's")
    p.add_argument("--steps", type=int, help="inner steps when a request names none "
                   "(default: the run's evaluation steps)")
    p.add_argument("--max-steps", type=int, default=500, help="most inner steps a request "
                   "may ask for (default 500)")
    p.add_argument("--workers", type=int, default=1, help="adaptations running at once "
                   "(default 1)")
    p.add_argument("--queue", type=int, default=8, help="adaptations waiting for a worker; "
                   "beyond: 503 + Retry-After (default 8)")
    p.add_argument("--max-body-bytes", type=int, default=10 * 2**20, help="larger request "
                   "bodies get 413 (default 10 MiB)")
    p.add_argument("--max-examples", type=int, default=1000, help="most support examples "
                   "per adaptation; more: 422 (default 1000)")
    p.add_argument("--max-inputs", type=int, default=256, help="most inputs per prediction "
                   "request; more: 422 (default 256)")
    p.add_argument("--cache-size", type=int, default=16, help="adapted models held in "
                   "memory (default 16; a text model holds a copy of its encoder)")
    p.add_argument("--max-image-pixels", type=int, default=4096 * 4096, help="most pixels "
                   "(width x height, read from the header before decoding) of one posted "
                   "image; more: 422 (default 16777216, 4096x4096)")
    p.add_argument("--max-request-pixels", type=int, default=4 * 4096 * 4096, help="most "
                   "pixels of all the images of one request; more: 422 (default 67108864)")
    p.add_argument("--header-timeout", type=float, default=10.0, help="seconds a connection "
                   "may take to send a request's headers; then it is closed (default 10)")
    p.add_argument("--body-timeout", type=float, default=30.0, help="seconds a request may "
                   "take to send its body; then 408 (default 30)")
    p.add_argument("--keep-alive-timeout", type=int, default=5, help="seconds an idle "
                   "kept-alive connection is held (default 5)")
    p.add_argument("--max-connections", type=int, default=1000, help="connections and "
                   "requests at once; a request beyond gets 503 (default 1000)")
    p.add_argument("--threads", type=int, help="torch threads per call (default: cores / "
                   "(workers + 1))")


def add_serve_parser(sub: Any) -> None:
    """Add ``serve`` to the subparsers ``sub``."""
    _serve_options(add_verb(sub, "serve", "serve a run over HTTP: adapt to posted support "
                            "sets, predict, with API keys and limits (serve extra)", _cmd_serve))
