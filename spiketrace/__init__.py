"""spiketrace: reproduce and explain latency spikes of connection-per-transaction TCP workloads."""

from common import __version__  # noqa: F401  (one version, kept on the ground floor)
