"""Benchmarks, run as commands (``till-agent bench ...``), never as timed unit tests.

``receipts`` measures, in one run and on the same machine, a raw baseline (ECDSA sign plus
one fsync'd SQLite insert per receipt, same data) against the full receipt path. The two
are interleaved in rounds so that noise from a shared machine hits both alike.
"""

from __future__ import annotations

import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from agent.contract import parse_sale
from agent.receipts import ReceiptService, RegisterSetup
from agent.signing import UnitConfig, create_software_unit, der_to_rs, open_unit
from agent.signing.registry import UnitRegistry, store_unit
from storage.db import open_till_db

__all__ = ["ReceiptBench", "bench_receipts"]

_PAYLOAD = (
    "_R1-AT1_BENCH-1_{n}_2026-01-02T08:00:00_12,50_4,20_0,00_0,00_0,00_"
    "iQAcOyJcxWA=_1a2b3c4d5e6f7081_GiMrOa45ezA="
)


@dataclass(frozen=True, slots=True)
class ReceiptBench:
    n: int
    rounds: int
    baseline_per_s: float
    agent_per_s: float
    ratio: float
    p50_ms: float
    p99_ms: float
    baseline_p99_ms: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def _baseline(tmp: Path) -> Callable[[int], float]:
    """ECDSA sign + one INSERT + COMMIT with WAL and synchronous=FULL, per receipt."""
    conn = sqlite3.connect(tmp / "baseline.sqlite3", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE r (n INTEGER PRIMARY KEY, jws TEXT NOT NULL)")
    key = ec.generate_private_key(ec.SECP256R1())
    algorithm = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)

    def one(n: int) -> float:
        start = time.perf_counter()
        data = _PAYLOAD.format(n=n).encode()
        signature = der_to_rs(key.sign(data, algorithm))
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO r VALUES (?, ?)", (n, data.decode() + signature.hex()))
        conn.execute("COMMIT")
        return time.perf_counter() - start

    return one


def _agent(tmp: Path) -> Callable[[int], float]:
    db = open_till_db(tmp / "data")
    key_file, cert_file = create_software_unit(tmp / "keys", name="bench")
    config = UnitConfig(
        id="bench", kind="software", zda="AT1", key_file=key_file, certificate_file=cert_file
    )
    registry = UnitRegistry()
    unit = open_unit(config)
    with db.write_connection().transaction() as conn:
        store_unit(conn, config, unit, "2026-01-01T00:00:00+00:00")
    registry.put(unit)
    service = ReceiptService(db, registry)
    service.init_register(RegisterSetup("BENCH-1", ["bench"]))

    def one(n: int) -> float:
        raw = (
            '{"request_id":"bench-%d","register":"BENCH-1","kind":"standard",'
            '"lines":[{"text":"Schnitzel","qty":"1","unit_price":"12.50","vat":"normal"},'
            '{"text":"Apfelsaft","qty":"2","unit_price":"2.10","vat":"reduced1"}],'
            '"payments":[{"method":"cash","amount":"16.70"}]}'
        ).replace("%d", str(n))
        start = time.perf_counter()
        service.issue(parse_sale(raw))
        return time.perf_counter() - start

    return one


def bench_receipts(
    n: int = 2000, rounds: int = 5, progress: Callable[[int], None] | None = None
) -> ReceiptBench:
    """Issue ``n`` receipts through each path, interleaved in ``rounds`` chunks."""
    with tempfile.TemporaryDirectory(prefix="till-bench-") as tmp:
        baseline, agent = _baseline(Path(tmp)), _agent(Path(tmp))
        base_samples: list[float] = []
        agent_samples: list[float] = []
        chunk = max(1, n // rounds)
        done = 0
        while done < n:
            size = min(chunk, n - done)
            base_samples.extend(baseline(i) for i in range(done, done + size))
            agent_samples.extend(agent(i) for i in range(done, done + size))
            done += size
            if progress is not None:
                progress(size)
    base_rate = len(base_samples) / sum(base_samples)
    agent_rate = len(agent_samples) / sum(agent_samples)
    return ReceiptBench(
        n=n,
        rounds=rounds,
        baseline_per_s=round(base_rate, 1),
        agent_per_s=round(agent_rate, 1),
        ratio=round(agent_rate / base_rate, 3),
        p50_ms=round(statistics.median(agent_samples) * 1000, 3),
        p99_ms=round(_percentile(agent_samples, 0.99), 3),
        baseline_p99_ms=round(_percentile(base_samples, 0.99), 3),
    )
