"""Prometheus metrics of the till agent: ``GET /metrics`` in the text format 0.0.4.

What is exposed is what ``GET /v1/status`` shows (:meth:`agent.api_backend.ServiceBackend.
metrics` builds both from one read of the till database), plus what only this process
knows: the receipts it committed (:class:`ReceiptCounts`), the latency of its durable
commits (:class:`storage.writer.WriteConnection`), the spool's backlog, its version and
start time. Names start with ``till_agent_``, carry their unit, and counters end in
``_total``.

Cost: the receipt path pays one list append per receipt, under the write lock it already
holds, and one dict increment per receipt once its transaction has committed; a durable
commit adds one bucket increment. Everything else is read when Prometheus scrapes: the
status's queries (the registers table and partial indexes, never a count over receipts or
the journal), two directory listings and a ``statvfs``.

The route needs no token: the API's bearer token issues receipts, and a scraper must not
hold that power. A scrape is a read: it shows counts, ages and states, never the content
of a receipt (no amounts, no texts, no signatures).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from storage.writer import COMMIT_BUCKETS_S

if TYPE_CHECKING:
    import datetime as dt

    from agent.api_backend import RegisterStatusOut, StatusOut

__all__ = [
    "CONTENT_TYPE",
    "Exposition",
    "MetricsSnapshot",
    "ReceiptCounts",
    "SpoolBacklog",
    "process_start_time",
    "render",
    "spool_backlog",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Kind = Literal["counter", "gauge", "histogram"]
Labels = Mapping[str, str]
_ReceiptKey = tuple[str, str, str]  # register, kind, signature_state
_IMPORTED_AT = time.time()  # the start time where /proc does not tell it


class ReceiptCounts:
    """The receipts this process committed, by register, kind and signature state.

    :meth:`stored` is called for each receipt stored in a write transaction and
    :meth:`settle` once the transaction has ended, both under the lock that transaction
    holds; :meth:`snapshot` copies the counts without a lock (one C-level dict copy).
    """

    __slots__ = ("_counts", "_pending")

    def __init__(self) -> None:
        self._counts: dict[_ReceiptKey, int] = {}
        self._pending: list[_ReceiptKey] = []

    def stored(self, register_id: str, kind: str, signature_state: str) -> None:
        """A receipt was stored in the open transaction (counted if it commits)."""
        self._pending.append((register_id, kind, signature_state))

    def settle(self, committed: bool) -> None:
        """Count the receipts of the transaction that ended (or forget them: rolled back)."""
        pending, self._pending = self._pending, []
        if committed:
            for key in pending:
                self._counts[key] = self._counts.get(key, 0) + 1

    def snapshot(self) -> dict[_ReceiptKey, int]:
        return self._counts.copy()


# -- the text format ----------------------------------------------------------------------


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _value(value: float) -> str:
    if isinstance(value, int) or (math.isfinite(value) and value.is_integer()):
        return str(int(value))
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


class Exposition:
    """Metric families written in the text format 0.0.4, in the order they are added."""

    def __init__(self) -> None:
        self._lines: list[str] = []

    def family(
        self, name: str, kind: Kind, help_text: str, samples: Iterable[tuple[Labels, float]]
    ) -> None:
        """``# HELP``, ``# TYPE`` and a line per sample (a family may have none)."""
        self._head(name, kind, help_text)
        for labels, value in samples:
            self._sample(name, labels, value)

    def histogram(
        self,
        name: str,
        help_text: str,
        bounds: Sequence[float],
        counts: Sequence[int],
        total: float,
    ) -> None:
        """A histogram from the counts per bucket (``counts``: one per bound in ``bounds``
        and one more for the values above them all), not yet cumulative."""
        self._head(name, "histogram", help_text)
        running = 0
        for bound, count in zip([*bounds, math.inf], counts, strict=True):
            running += count
            le = "+Inf" if math.isinf(bound) else repr(float(bound))  # as client libraries do
            self._sample(f"{name}_bucket", {"le": le}, running)
        self._sample(f"{name}_sum", {}, total)
        self._sample(f"{name}_count", {}, running)

    def text(self) -> str:
        return "\n".join(self._lines) + "\n"

    def _head(self, name: str, kind: Kind, help_text: str) -> None:
        self._lines.append(f"# HELP {name} {_escape_help(help_text)}")
        self._lines.append(f"# TYPE {name} {kind}")

    def _sample(self, name: str, labels: Labels, value: float) -> None:
        shown = ",".join(f'{key}="{_escape_label(v)}"' for key, v in labels.items())
        self._lines.append(
            f"{name}{{{shown}}} {_value(value)}" if shown else f"{name} {_value(value)}"
        )


# -- what only the process knows ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpoolBacklog:
    """The sales waiting in the spool: how many in ``in/`` and ``work/``, and the age of
    the oldest of them (0 when there is none)."""

    files: Mapping[str, int]
    oldest_age_s: float


def spool_backlog(root: Path, now: float) -> SpoolBacklog:
    """The sales in ``root``'s ``in/`` and ``work/`` (named as :mod:`agent.spool` names a
    sale: ``NAME.json``, no dotfile, in ``in/`` no answer's name), ``now``: Unix time."""
    files: dict[str, int] = {}
    oldest = now
    for directory in ("in", "work"):
        times = _sale_times(root / directory, answers_too=directory == "work")
        files[directory] = len(times)
        oldest = min([oldest, *times])
    return SpoolBacklog(files, max(0.0, now - oldest))


def _sale_times(directory: Path, *, answers_too: bool) -> list[float]:
    """The modification times of the sales in ``directory`` (none if it is missing)."""
    times: list[float] = []
    with contextlib.suppress(FileNotFoundError), os.scandir(directory) as entries:
        for entry in entries:
            name = entry.name
            if name.startswith(".") or not name.endswith(".json") or name == ".json":
                continue
            if not answers_too and name.endswith((".result.json", ".error.json")):
                continue  # left in in/ on purpose (logged), never processed
            with contextlib.suppress(FileNotFoundError):  # claimed or answered meanwhile
                times.append(entry.stat(follow_symlinks=False).st_mtime_ns / 1e9)
    return times


def process_start_time() -> float:
    """When this process started, in Unix time: from ``/proc`` (Linux), else when this
    module was imported (at the start of the agent too)."""
    try:
        stat = Path("/proc/self/stat").read_text()
        ticks = int(stat.rpartition(")")[2].split()[19])  # field 22, starttime
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED_AT


# -- from the status and the rest to the families -----------------------------------------


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """Everything one scrape shows, read at once.

    Args:
        status: what ``GET /v1/status`` shows now.
        window_s: the outage window (48 h unless configured otherwise), in seconds.
        probed_at: per unit, the latest probe journaled into an open outage on it.
        receipts: :meth:`ReceiptCounts.snapshot`.
        commit_buckets: the durable commits per bucket of ``COMMIT_BUCKETS_S`` (and one
            more for the slower ones); ``commit_seconds``: their total time.
        spool: the spool's backlog; None when the spool is disabled.
        started_at: when the process started (Unix time).
    """

    status: StatusOut
    window_s: float
    probed_at: Mapping[str, dt.datetime]
    receipts: Mapping[_ReceiptKey, int]
    commit_buckets: Sequence[int]
    commit_seconds: float
    spool: SpoolBacklog | None
    started_at: float


def render(snapshot: MetricsSnapshot) -> str:
    """The exposition of ``snapshot`` (every family is there, with or without samples)."""
    out = Exposition()
    _process(out, snapshot)
    _registers(out, snapshot.status.registers, snapshot.window_s)
    _units(out, snapshot)
    _spool(out, snapshot.spool)
    _printer_and_disk(out, snapshot.status)
    out.histogram(
        "till_agent_db_commit_duration_seconds",
        "Durable commits of the till database (receipts and journal events; with"
        " synchronous=FULL each waits for an fsync), since the process started.",
        COMMIT_BUCKETS_S,
        snapshot.commit_buckets,
        snapshot.commit_seconds,
    )
    return out.text()


def _process(out: Exposition, snapshot: MetricsSnapshot) -> None:
    out.family(
        "till_agent_build_info",
        "gauge",
        "Always 1; the version of the running agent is its label.",
        [({"version": snapshot.status.version}, 1)],
    )
    out.family(
        "till_agent_process_start_time_seconds",
        "gauge",
        "When the agent's process started, in seconds since the Unix epoch.",
        [({}, snapshot.started_at)],
    )
    out.family(
        "till_agent_receipts_issued_total",
        "counter",
        "Receipts this process committed, by register, kind and signature state.",
        [
            ({"register": r, "kind": kind, "signature_state": state}, count)
            for (r, kind, state), count in sorted(snapshot.receipts.items())
        ],
    )


def _registers(out: Exposition, registers: Sequence[RegisterStatusOut], window_s: float) -> None:
    def per_register(name: str, help_text: str, values: Iterable[tuple[str, float]]) -> None:
        out.family(name, "gauge", help_text, [({"register": r}, v) for r, v in values])

    out.family(
        "till_agent_register_info",
        "gauge",
        "Always 1; the register's state (active, closed, waiting: its Startbeleg waits)"
        " and its active unit are its labels.",
        [({"register": r.register_id, "state": r.state, "unit": r.unit.id}, 1) for r in registers],
    )
    per_register(
        "till_agent_receipt_last_number",
        "The number of the register's last receipt.",
        [(r.register_id, r.last_number) for r in registers],
    )
    opened = [(r.register_id, r.open_outage) for r in registers]
    per_register(
        "till_agent_outage_open",
        "1 while the register has an open outage (its signed Sammelbeleg closes it), else 0.",
        [(r, float(o is not None)) for r, o in opened],
    )
    per_register(
        "till_agent_outage_age_seconds",
        "How long the register's open outage has lasted (only while one is open).",
        [(r, o.age_s) for r, o in opened if o is not None],
    )
    per_register(
        "till_agent_outage_window_remaining_seconds",
        "Seconds left of the open outage's 48-hour window (negative once past it: the"
        " FinanzOnline report is due; only while one is open).",
        [(r, window_s - o.age_s) for r, o in opened if o is not None],
    )
    per_register(
        "till_agent_unsigned_receipts",
        "Unsigned receipts waiting for their remedy (Nullbeleg and reissue).",
        [(r.register_id, r.unsigned_count) for r in registers],
    )
    per_register(
        "till_agent_special_receipts_waiting",
        "Receipts that must be signed and wait for the unit (Start-, Jahres-, Schluss-,"
        " Sammelbeleg; an open outage waits for its Sammelbeleg).",
        [(r.register_id, len(r.waiting_special)) for r in registers],
    )
    per_register(
        "till_agent_finanzonline_reports_due",
        "FinanzOnline reports the register's outages owe (of an outage past 48 hours or of"
        " its end), until their reference is recorded.",
        [(r.register_id, len(r.reports_due)) for r in registers],
    )
    per_register(
        "till_agent_finanzonline_reports_overdue",
        "FinanzOnline reports owed past their due time.",
        [(r.register_id, sum(d.overdue for d in r.reports_due)) for r in registers],
    )
    per_register(
        "till_agent_belegchecks_open",
        "Belegchecks, decommissioning reports and unit registrations after a unit switch"
        " the operator owes, failed ones too.",
        [(r.register_id, len(r.open_checks)) for r in registers],
    )
    per_register(
        "till_agent_belegchecks_overdue",
        "Owed Belegchecks (and reports, unit registrations) past their due date.",
        [(r.register_id, sum(c.overdue for c in r.open_checks)) for r in registers],
    )
    per_register(
        "till_agent_backup_overdue",
        "1 when a quarter ended more than 7 days ago without its DEP backup, else 0.",
        [(r.register_id, float(r.backup.overdue)) for r in registers],
    )
    per_register(
        "till_agent_backup_failing",
        "1 while the register's DEP backups fail (retried every minute), else 0.",
        [(r.register_id, float(r.backup.failure is not None)) for r in registers],
    )


_UNIT_STATES = ("up", "down", "unknown")


def _units(out: Exposition, snapshot: MetricsSnapshot) -> None:
    units = {r.unit.id: r.unit.state for r in snapshot.status.registers}
    out.family(
        "till_agent_unit_state",
        "gauge",
        "1 for the unit's state (down: an open outage is on it or its last receipt was a"
        " fallback one; up: its last receipt was signed; a closed register's do not"
        " count), 0 for the others.",
        [
            ({"unit": unit, "state": state}, float(shown == state))
            for unit, shown in sorted(units.items())
            for state in _UNIT_STATES
        ],
    )
    now = snapshot.status.time
    out.family(
        "till_agent_unit_last_probe_age_seconds",
        "gauge",
        "Seconds since the unit was last probed (probes run only while an outage is open on it).",
        [
            ({"unit": unit}, max(0.0, (now - at).total_seconds()))
            for unit, at in sorted(snapshot.probed_at.items())
        ],
    )


def _spool(out: Exposition, spool: SpoolBacklog | None) -> None:
    out.family(
        "till_agent_spool_files",
        "gauge",
        "Sales waiting in the spool: dir=in (not claimed yet), dir=work (claimed, being"
        " issued or retried).",
        [] if spool is None else [({"dir": d}, n) for d, n in sorted(spool.files.items())],
    )
    out.family(
        "till_agent_spool_oldest_file_age_seconds",
        "gauge",
        "Age of the oldest sale waiting in the spool's in/ or work/ (0 when none waits).",
        [] if spool is None else [({}, spool.oldest_age_s)],
    )


_PRINTER_STATES = ("ready", "offline", "error", "disabled")


def _printer_and_disk(out: Exposition, status: StatusOut) -> None:
    printer = status.printer
    out.family(
        "till_agent_printer_state",
        "gauge",
        "1 for the printer's state, 0 for the others.",
        [({"state": state}, float(printer.state == state)) for state in _PRINTER_STATES],
    )
    out.family(
        "till_agent_print_jobs_queued",
        "gauge",
        "Print jobs queued or failed and not printed yet.",
        [({}, printer.queued)],
    )
    out.family(
        "till_agent_data_disk_free_bytes",
        "gauge",
        "Free space on the data directory's disk (a full one stops every sale).",
        [({}, status.disk.free_bytes)],
    )
    out.family(
        "till_agent_data_disk_size_bytes",
        "gauge",
        "Size of the data directory's disk.",
        [({}, status.disk.total_bytes)],
    )
