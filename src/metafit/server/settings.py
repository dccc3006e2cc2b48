"""Settings of the HTTP server, API keys, and what the served directory is.

A served directory is either a **run** (``config.yaml`` + checkpoints, written by
``metafit train``: the server adapts it to posted support sets) or an **adapted model**
(written by ``AdaptedModel.save``: the server only predicts with it).
"""

from __future__ import annotations

import ipaddress
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from metafit.algorithms.heads import CLASSIFIERS

__all__ = ["ServerSettings", "load_api_keys", "is_loopback", "ENV_API_KEYS"]

ENV_API_KEYS = "METAFIT_API_KEYS"


@dataclass(frozen=True)
class ServerSettings:
    """Everything :func:`metafit.server.create_app` needs.

    Attributes:
        target: a run directory or an adapted-model directory.
        state_dir: where adaptations are kept (default ``<run>/adaptations``); one
            sub-directory per adaptation id, so they survive a restart.
        model_dir: an adapted model for ``POST /v1/predict`` next to a run (a model
            ``target`` sets it itself).
        checkpoint: the run's checkpoint to adapt (``best`` or ``last``).
        classifier: a test-time classifier instead of the run recipe's (``"logistic"``;
            ProtoNet, FineTune and linear_probe runs; see :mod:`metafit.algorithms.heads`).
        classifier_penalty: the logistic head's L2 penalty instead of the recipe's.
        api_keys: accepted keys; empty: no authentication.
        max_body_bytes: larger request bodies get 413, before they are parsed.
        max_examples: most support examples per adaptation (more: 422).
        max_inputs: most inputs per prediction request (more: 422).
        max_steps: most inner steps a request may ask for (more: 422).
        steps: inner steps when a request names none (None: the run's evaluation steps).
        workers: adaptations running at once (threads).
        queue: adaptations waiting for a worker; beyond it requests get 503.
        cache_size: adapted models kept loaded in memory (least recently used dropped).
        max_image_pixels: most pixels (width x height) one posted image may declare in
            its header (more: 422, before decoding). Default 16 megapixels (4096 x 4096).
        max_request_pixels: most pixels of all the images of one request together (more:
            422, before decoding). Default 64 megapixels.
        header_timeout: seconds a connection may take to send a request's headers (from
            its opening, or from the previous response on a kept-alive connection);
            then it is closed. Default 10.
        body_timeout: seconds a request may take to send its body once its headers are
            in; then it gets 408. Default 30.
        keep_alive_timeout: seconds an idle kept-alive connection is held. Default 5.
        max_connections: connections and requests in progress at once; a request beyond
            gets 503 (uvicorn's ``limit_concurrency``). Default 1000.
    """

    target: Path
    state_dir: Path | None = None
    model_dir: Path | None = None
    checkpoint: str = "best"
    classifier: str | None = None
    classifier_penalty: float | None = None
    api_keys: frozenset[str] = field(default_factory=frozenset, repr=False)
    max_body_bytes: int = 10 * 2**20
    max_examples: int = 1000
    max_inputs: int = 256
    max_steps: int = 500
    steps: int | None = None
    workers: int = 1
    queue: int = 8
    cache_size: int = 16
    max_image_pixels: int = 4096 * 4096
    max_request_pixels: int = 4 * 4096 * 4096
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keep_alive_timeout: int = 5
    max_connections: int = 1000

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_examples", "max_inputs", "workers", "cache_size",
                     "max_image_pixels", "max_request_pixels", "max_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"server setting {name} must be at least 1")
        for name in ("header_timeout", "body_timeout", "keep_alive_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"server setting {name} must be a number of seconds > 0")
        if self.queue < 0 or self.max_steps < 0 or (self.steps is not None and self.steps < 0):
            raise ValueError("server settings queue, max_steps and steps must not be negative")
        if self.checkpoint not in ("best", "last"):
            raise ValueError(f"checkpoint must be 'best' or 'last', not {self.checkpoint!r}")
        if self.classifier is not None and self.classifier not in CLASSIFIERS:
            raise ValueError(f"classifier must be one of {', '.join(CLASSIFIERS)}, not "
                             f"{self.classifier!r}")
        if self.classifier_penalty is not None and not self.classifier_penalty >= 0:
            raise ValueError(f"classifier_penalty must be a number >= 0, not "
                             f"{self.classifier_penalty!r}")

    @property
    def is_run(self) -> bool:
        """Whether the target is a run directory (adaptations allowed)."""
        return (Path(self.target) / "config.yaml").is_file()

    @property
    def adaptations_dir(self) -> Path:
        """The state directory, defaulted to ``<run>/adaptations``."""
        return Path(self.state_dir) if self.state_dir else Path(self.target) / "adaptations"


def load_api_keys(path: str | os.PathLike[str] | None = None,
                  env: str | None = None) -> frozenset[str]:
    """The API keys from ``path`` (one per line; blank lines and ``#`` comments skipped)
    and from ``env`` (default ``$METAFIT_API_KEYS``, comma-separated), together.

    Like ssh with its private keys, a key file that its owner's group or others may read
    or write is refused (``chmod 600 FILE``), on systems with POSIX permissions.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is given but holds no key, or is open to group or others; a
            key contains whitespace.
    """
    keys: set[str] = set()
    if path is not None:
        _check_private(Path(path))
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        from_file = {s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")}
        if not from_file:
            raise ValueError(f"API key file {path} holds no key")
        keys |= from_file
    raw = os.environ.get(ENV_API_KEYS, "") if env is None else env
    keys |= {k.strip() for k in raw.split(",") if k.strip()}
    if any(any(c.isspace() for c in k) for k in keys):
        raise ValueError("an API key contains whitespace")  # never echo the key itself
    return frozenset(keys)


def _check_private(path: Path) -> None:
    """Refuse a key file with any permission for group or others (POSIX only)."""
    if os.name != "posix":
        return
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ValueError(f"API key file {path} is open to other users (mode {mode:04o}): "
                         f"run `chmod 600 {path}` (it must be readable by its owner only)")


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens on this machine (``localhost``, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
