"""The HTTP server of ``metafit serve`` (needs the ``serve`` extra: FastAPI, uvicorn).

``create_app(ServerSettings(target=RUN_OR_MODEL, ...))`` builds the FastAPI application;
:func:`serve` runs it with uvicorn. Endpoints, authentication and limits: docs/serve.md.
"""

from metafit.server.app import create_app
from metafit.server.runner import serve
from metafit.server.settings import ServerSettings, is_loopback, load_api_keys

__all__ = ["create_app", "serve", "ServerSettings", "load_api_keys", "is_loopback"]
