"""The end-of-run summary of a bench client run: computed from the records on disk (so it is
the same whether the run completed or was interrupted), then rendered."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Dict, List, Optional

SLOW_MS = 100.0


@dataclasses.dataclass
class LatencySummary:
    transactions: int
    ok: int
    outcomes: Dict[str, int]
    elapsed_s: float  # first start to last end in the records
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    p999_ms: float = 0.0
    max_ms: float = 0.0
    slow: int = 0  # ok transactions over SLOW_MS

    @property
    def rate(self) -> float:
        return self.transactions / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @classmethod
    def from_run(cls, run_dir: os.PathLike) -> "LatencySummary":
        """Read only t_start, t_end and outcome of `transactions.parquet`, part by part."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        parts = sorted((Path(run_dir) / "transactions.parquet").glob("*.parquet"))
        lat: List = []
        outcomes: Dict[str, int] = {}
        first, last = None, None
        for part in parts:
            t = pq.read_table(part, columns=["t_start", "t_end", "outcome"])
            if t.num_rows == 0:
                continue
            start = t.column("t_start").to_numpy()
            end = t.column("t_end").to_numpy()
            first = start.min() if first is None else min(first, start.min())
            last = end.max() if last is None else max(last, end.max())
            for row in pc.value_counts(t.column("outcome")).to_pylist():
                outcomes[row["values"]] = outcomes.get(row["values"], 0) + row["counts"]
            ok = pc.equal(t.column("outcome"), pa.scalar("ok")).to_numpy(zero_copy_only=False)
            lat.append((end[ok] - start[ok]).astype(np.int64))
        n = sum(outcomes.values())
        summary = cls(transactions=n, ok=outcomes.get("ok", 0), outcomes=outcomes,
                      elapsed_s=float(last - first) / 1e9 if n else 0.0)
        if lat:
            ms = np.concatenate(lat) / 1e6
            if len(ms):
                p50, p99, p999 = np.percentile(ms, [50, 99, 99.9])
                summary.p50_ms, summary.p99_ms, summary.p999_ms = float(p50), float(p99), float(p999)
                summary.max_ms = float(ms.max())
                summary.slow = int((ms > SLOW_MS).sum())
        return summary

    def lines(self, rate: Optional[float] = None) -> List[str]:
        """The summary as text lines. `rate` overrides the rate computed from the records."""
        rate = self.rate if rate is None else rate
        failed = {k: v for k, v in sorted(self.outcomes.items()) if k != "ok"}
        out = [
            f"{self.transactions:,} transactions in {self.elapsed_s:.1f} s: {rate:,.0f} transactions/s"
            + (f" ({self.ok:,} ok, " + ", ".join(f"{v:,} {k}" for k, v in failed.items()) + ")"
               if failed else ""),
            f"latency ms: p50 {self.p50_ms:.3f}  p99 {self.p99_ms:.3f}  p99.9 {self.p999_ms:.3f}  "
            f"max {self.max_ms:.1f}",
            f"over {SLOW_MS:g} ms: {self.slow:,}"
            + (f" ({100.0 * self.slow / self.ok:.3f}%)" if self.ok else ""),
        ]
        return out
