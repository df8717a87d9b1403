"""The echo benchmark: an instrumented server (`bench.server`) and load generator
(`bench.client`), with a minimal C reference pair in `bench/c/`."""
from __future__ import annotations

from bench.client import ClientOptions, ClientResult, run_clients
from bench.server import ServerOptions, ServerProcess, serve, start_server_process

__all__ = ["ClientOptions", "ClientResult", "run_clients", "ServerOptions", "ServerProcess",
           "serve", "start_server_process"]
