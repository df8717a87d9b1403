"""spiketrace: reproduce and explain latency spikes of connection-per-transaction TCP workloads."""

__version__ = "0.1.0"
