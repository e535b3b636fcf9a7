"""Benchmarks, run as commands (``till-agent bench ...``), never as timed unit tests.

``receipts`` measures, in one run and on the same machine, a raw baseline (ECDSA sign plus
one fsync'd SQLite insert per receipt, same data) against the full receipt path, and a
floor: the work no RKSV receipt can skip, written as tightly as Python allows. The three
are interleaved in rounds so that noise from a shared machine hits them alike.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent.contract import parse_sale
from agent.receipts import ReceiptService, RegisterSetup
from agent.signing import UnitConfig, create_software_unit, der_to_rs, open_unit
from agent.signing.registry import UnitRegistry, store_unit
from storage.db import open_till_db
from storage.writer import WriteConnection

__all__ = ["OutageBench", "ReceiptBench", "bench_outage", "bench_receipts"]

_PAYLOAD = (
    "_R1-AT1_BENCH-1_{n}_2026-01-02T08:00:00_12,50_4,20_0,00_0,00_0,00_"
    "iQAcOyJcxWA=_1a2b3c4d5e6f7081_GiMrOa45ezA="
)


@dataclass(frozen=True, slots=True)
class ReceiptBench:
    n: int
    rounds: int
    clients: int
    baseline_per_s: float
    agent_per_s: float
    ratio: float
    floor_per_s: float
    floor_ratio: float
    p50_ms: float
    p99_ms: float
    baseline_p99_ms: float
    # where the time goes: the fsync'd COMMIT of each path, per receipt
    baseline_commit_ms: float
    agent_commit_ms: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def _baseline(tmp: Path, commits: list[float] | None = None) -> Callable[[int], float]:
    """ECDSA sign + one INSERT + COMMIT with WAL and synchronous=FULL, per receipt.

    The time of each COMMIT is appended to ``commits`` when given."""
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
        committing = time.perf_counter()
        conn.execute("COMMIT")
        end = time.perf_counter()
        if commits is not None:
            commits.append(end - committing)
        return end - start

    return one


_FLOOR_SCHEMA = """
CREATE TABLE register (id TEXT PRIMARY KEY, last_number INTEGER NOT NULL,
    turnover INTEGER NOT NULL, last_jws TEXT NOT NULL, public_key BLOB NOT NULL);
CREATE TABLE receipt (register_id TEXT NOT NULL, number INTEGER NOT NULL,
    request_id TEXT NOT NULL, jws TEXT NOT NULL, document TEXT NOT NULL,
    PRIMARY KEY (register_id, number), UNIQUE (register_id, request_id));
CREATE TABLE journal (seq INTEGER PRIMARY KEY, data TEXT NOT NULL, hash TEXT NOT NULL);
"""
_VAT = {"normal": 0, "reduced1": 1, "reduced2": 2, "zero": 3, "special": 4}


def _sale_json(n: int) -> str:
    return (
        '{"request_id":"bench-%d","register":"BENCH-1","kind":"standard",'
        '"lines":[{"text":"Schnitzel","qty":"1","unit_price":"12.50","vat":"normal"},'
        '{"text":"Apfelsaft","qty":"2","unit_price":"2.10","vat":"reduced1"}],'
        '"payments":[{"method":"cash","amount":"16.70"}]}'
    ).replace("%d", str(n))


def _floor(
    tmp: Path,
    key: ec.EllipticCurvePrivateKey | None = None,
    public: ec.EllipticCurvePublicKey | None = None,
) -> Callable[[int], float]:
    """What no RKSV receipt can skip, in the tightest Python, with no checks beyond them.

    Per sale: parse it and sum it in cents per VAT class; in one ``BEGIN IMMEDIATE``
    transaction look up its ``request_id`` and read the register; encrypt the turnover
    counter (AES-256-CTR), chain to the previous JWS (SHA-256), sign ES256 and verify the
    signature; append a hash-chained journal event, insert the receipt, update the
    register; commit with WAL and synchronous=FULL (one fsync). No printable text, QR/OCR
    forms, outage book, idempotency hash or error messages: the agent's path does more.
    """
    conn = sqlite3.connect(tmp / "floor.sqlite3", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.executescript(_FLOOR_SCHEMA)
    key = key or ec.generate_private_key(ec.SECP256R1())
    public = public or key.public_key()  # a test passes another key: the verify must fail
    algorithm = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
    block = Cipher(algorithms.AES(bytes(32)), modes.ECB()).encryptor()  # noqa: S305
    header = base64.urlsafe_b64encode(b'{"alg":"ES256"}').rstrip(b"=")
    encode = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode
    der = public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    conn.execute("INSERT INTO register VALUES ('BENCH-1', 0, 0, 'BENCH-1', ?)", (der,))
    conn.execute("INSERT INTO journal VALUES (0, '', ?)", ("0" * 64,))

    def one(n: int) -> float:
        start = time.perf_counter()
        sale = json.loads(_sale_json(n))
        amounts = [0] * 5
        for line in sale["lines"]:
            cents = Decimal(line["qty"]) * Decimal(line["unit_price"]) * 100
            amounts[_VAT[line["vat"]]] += int(cents)
        conn.execute("BEGIN IMMEDIATE")
        seen = conn.execute(
            "SELECT 1 FROM receipt WHERE register_id = ? AND request_id = ?",
            (sale["register"], sale["request_id"]),
        ).fetchone()
        if seen is not None:  # pragma: no cover - every request_id is new here
            raise RuntimeError("repeated request_id")
        number, turnover, last_jws = conn.execute(
            "SELECT last_number, turnover, last_jws FROM register WHERE id = ?",
            (sale["register"],),
        ).fetchone()
        number, turnover = number + 1, turnover + sum(amounts)
        receipt_id = str(number)
        iv = hashlib.sha256(f"{sale['register']}{receipt_id}".encode()).digest()[:16]
        stream = block.update(iv)
        counter = bytes(p ^ s for p, s in zip(turnover.to_bytes(8, "big"), stream, strict=False))
        chain = hashlib.sha256(last_jws.encode()).digest()[:8]
        amount_text = "_".join(f"{a // 100},{a % 100:02d}" for a in amounts)
        payload = (
            f"_R1-AT1_{sale['register']}_{receipt_id}_2026-01-02T08:00:00_{amount_text}_"
            f"{base64.b64encode(counter).decode()}_1a2b3c4d5e6f7081_"
            f"{base64.b64encode(chain).decode()}"
        )
        signed = header + b"." + base64.urlsafe_b64encode(payload.encode()).rstrip(b"=")
        signature = key.sign(signed, algorithm)
        public.verify(signature, signed, algorithm)
        rs = der_to_rs(signature)
        jws = f"{signed.decode()}.{base64.urlsafe_b64encode(rs).rstrip(b'=').decode()}"
        document = encode(
            {"number": number, "jws": jws, "lines": sale["lines"], "payments": sale["payments"]}
        )
        last = "SELECT seq, hash FROM journal ORDER BY seq DESC LIMIT 1"
        seq, prev = conn.execute(last).fetchone()
        digest = hashlib.sha256(f"{seq + 1}\x1f{document}\x1f{prev}".encode()).hexdigest()
        conn.execute("INSERT INTO journal VALUES (?, ?, ?)", (seq + 1, document, digest))
        conn.execute(
            "INSERT INTO receipt VALUES (?, ?, ?, ?, ?)",
            (sale["register"], number, sale["request_id"], jws, document),
        )
        conn.execute(
            "UPDATE register SET last_number = ?, turnover = ?, last_jws = ? WHERE id = ?",
            (number, turnover, jws, sale["register"]),
        )
        conn.execute("COMMIT")
        return time.perf_counter() - start

    return one


def _agent(tmp: Path) -> tuple[Callable[[range, int], tuple[float, list[float]]], WriteConnection]:
    """The full receipt path: parse, validate, sign, verify, journal, commit, per sale;
    and the write connection, which times its commits."""
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
        raw = _sale_json(n)
        start = time.perf_counter()
        service.issue(parse_sale(raw))
        return time.perf_counter() - start

    def chunk(numbers: range, clients: int) -> tuple[float, list[float]]:
        """Issue ``numbers`` from ``clients`` POS threads; the wall time and each latency."""
        start = time.perf_counter()
        if clients == 1:
            samples = [one(i) for i in numbers]
        else:
            with ThreadPoolExecutor(clients) as pool:
                samples = list(pool.map(one, numbers))
        return time.perf_counter() - start, samples

    return chunk, db.write_connection()


def bench_receipts(
    n: int = 2000,
    rounds: int = 5,
    clients: int = 1,
    progress: Callable[[int], None] | None = None,
    directory: Path | None = None,
) -> ReceiptBench:
    """Issue ``n`` receipts through each path, interleaved in ``rounds`` chunks.

    The databases live in a temporary directory, inside ``directory`` when given (the
    disk the till's data directory is on: its fsync is what the commits pay).

    The baseline issues one receipt after the other (that is what it measures: the
    cost of one signature and one fsync'd commit). The agent gets its sales from
    ``clients`` concurrent POS threads, as a till service does; it shares commits
    between waiting sales (group commit) and acknowledges none before its commit.
    """
    with tempfile.TemporaryDirectory(prefix="till-bench-", dir=directory) as tmp:
        base_commits: list[float] = []
        baseline, floor = _baseline(Path(tmp), base_commits), _floor(Path(tmp))
        agent, writer = _agent(Path(tmp))
        commits_before, commit_seconds_before = writer.commits, writer.commit_seconds
        base_samples: list[float] = []
        floor_samples: list[float] = []
        agent_samples: list[float] = []
        agent_wall = 0.0
        chunk = max(1, n // rounds)
        done = 0
        while done < n:
            size = min(chunk, n - done)
            base_samples.extend(baseline(i) for i in range(done, done + size))
            floor_samples.extend(floor(i) for i in range(done, done + size))
            wall, samples = agent(range(done, done + size), clients)
            agent_wall += wall
            agent_samples.extend(samples)
            done += size
            if progress is not None:
                progress(size)
        agent_commit_s = (writer.commit_seconds - commit_seconds_before) / n
        if writer.commits - commits_before < (n if clients == 1 else 1):  # pragma: no cover
            raise RuntimeError("the agent committed fewer transactions than it issued receipts")
    base_rate = len(base_samples) / sum(base_samples)
    floor_rate = len(floor_samples) / sum(floor_samples)
    agent_rate = len(agent_samples) / agent_wall
    return ReceiptBench(
        n=n,
        rounds=rounds,
        clients=clients,
        baseline_per_s=round(base_rate, 1),
        agent_per_s=round(agent_rate, 1),
        ratio=round(agent_rate / base_rate, 3),
        floor_per_s=round(floor_rate, 1),
        floor_ratio=round(floor_rate / base_rate, 3),
        p50_ms=round(statistics.median(agent_samples) * 1000, 3),
        p99_ms=round(_percentile(agent_samples, 0.99), 3),
        baseline_p99_ms=round(_percentile(base_samples, 0.99), 3),
        baseline_commit_ms=round(statistics.mean(base_commits) * 1000, 3),
        agent_commit_ms=round(agent_commit_s * 1000, 3),
    )


@dataclass(frozen=True, slots=True)
class OutageBench:
    n: int
    deadline_ms: float
    probe_interval_s: float
    first_ms: float
    open_p50_ms: float
    open_p99_ms: float
    recovery_s: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def bench_outage(
    n: int = 1000,
    deadline_s: float = 3.0,
    probe_interval_s: float = 1.0,
    progress: Callable[[int], None] | None = None,
) -> OutageBench:
    """An outage, measured: the first receipt meets a unit that hangs until the deadline;
    the next ``n`` take the open breaker; then the unit comes back and the real probe
    thread (fixed interval, no jitter) issues the Sammelbeleg."""
    from agent.probe import Backoff, Prober
    from agent.signing.flaky import FlakyUnit

    with tempfile.TemporaryDirectory(prefix="till-bench-") as tmp:
        db = open_till_db(Path(tmp) / "data")
        key_file, cert_file = create_software_unit(Path(tmp) / "keys", name="bench")
        config = UnitConfig(
            id="bench", kind="software", zda="AT1", key_file=key_file, certificate_file=cert_file
        )
        registry = UnitRegistry()
        flaky = FlakyUnit(open_unit(config), delay=3600.0)
        with db.write_connection().transaction() as conn:
            store_unit(conn, config, flaky, "2026-01-01T00:00:00+00:00")
        registry.put(flaky)
        service = ReceiptService(db, registry, sign_timeout=deadline_s)
        service.init_register(RegisterSetup("BENCH-1", ["bench"]))
        sale = (
            '{"request_id":"o-%d","register":"BENCH-1","kind":"standard",'
            '"lines":[{"text":"Kaffee","qty":"1","unit_price":"3.40","vat":"reduced1"}],'
            '"payments":[{"method":"cash","amount":"3.40"}]}'
        )
        flaky.mode = "slow"  # hangs: the first receipt waits for the deadline, no longer
        start = time.perf_counter()
        first = service.issue(sale.replace("%d", "0"))
        first_s = time.perf_counter() - start
        if first.signature_state != "fallback":  # pragma: no cover - would be a bug
            raise RuntimeError("the first receipt of the outage was not a fallback receipt")
        samples = []
        for i in range(1, n + 1):
            t0 = time.perf_counter()
            service.issue(sale.replace("%d", str(i)))
            samples.append(time.perf_counter() - t0)
            if progress is not None and i % 100 == 0:
                progress(100)
        backoff = Backoff(initial=probe_interval_s, cap=probe_interval_s, jitter=0.0)
        prober = Prober(service, backoff, deadline=deadline_s)
        prober.start()
        try:
            flaky.mode = "up"
            back = time.perf_counter()
            while service.outages.is_open("BENCH-1"):
                time.sleep(0.005)
            recovery_s = time.perf_counter() - back
        finally:
            prober.stop()
            registry.close()
            db.close()
    return OutageBench(
        n=n,
        deadline_ms=deadline_s * 1000,
        probe_interval_s=probe_interval_s,
        first_ms=round(first_s * 1000, 3),
        open_p50_ms=round(statistics.median(samples) * 1000, 3),
        open_p99_ms=round(_percentile(samples, 0.99), 3),
        recovery_s=round(recovery_s, 3),
    )
