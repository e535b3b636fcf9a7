"""SIGKILL ``till-agent run`` 50 times while sales stream in through the spool and the API.

Three feeders run for the whole test, as a POS would, whether the agent is up or not: one
drops sale files into ``spool/in/`` (a temporary name, then a rename), two post sales to
the local API and repeat a request with the same request_id until it gets an answer (a
transport error or a 503 is retried, as the API asks). A few sales of each are invalid.
Each round starts the agent, waits until it answered a sale, lets it work for a random
while and kills it with SIGKILL; about one round in ten kills it while it starts. Each
agent is forked from one interpreter that imported ``till-agent`` once (tests/zygote.py):
a real process that starts the whole service from scratch; the other end-to-end tests
start the installed console script. A last, clean run drains the spool and prints the
backlog, then SIGTERM stops it. Then:

* every sale file has exactly one answer (``out/NAME.result.json`` or
  ``failed/NAME.error.json``), valid sales a result naming their receipt, invalid ones an
  error; nothing is left in ``in/`` or ``work/``, no temporary file anywhere;
* every API answer (2xx) names the receipt stored for its request_id, repeats included;
  every valid API sale got one, no invalid one has a receipt;
* receipt numbers are 1..N, each request_id has one receipt, every receipt with a
  request_id was answered;
* every receipt was printed at least once on the TCP printer (duplicates after a kill
  are allowed: printing is at-least-once) and nothing was printed that is not a receipt;
* ``till-agent export dep`` plus ``export crypto-container`` pass ``till-agent verify``.

The same test runs a second time with power cuts (tests/powercut.py): every agent runs
with the power-cut shim preloaded, and after each kill the database files are left as a
power cut would leave them (as of their last fsync; half of the time with a random part
of the later writes, torn). Print jobs commit without an fsync of their own, so a cut
may lose them: every receipt must still be printed, and every answered sale be there.
Other files (spool, keys, the API token) are taken as durable.

``CRASH_SEED`` replaces the seed of the kill schedule and the feeders (it is in every
message).
"""

from __future__ import annotations

import abc
import json
import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e.harness import (
    TILL_AGENT,
    Agent,
    Launch,
    Stored,
    TcpPrinter,
    agent_config,
    agent_env,
    launcher,
    read_receipts,
)
from factories import sale
from powercut import PowerCut, build_shim
from storage.db import open_till_db
from storage.journal import verify_journal
from zygote import Forked, Zygote

RUN_CHILD = Path(__file__).resolve().parent / "run_child.py"
ROUNDS = 50
SEED = int(os.environ.get("CRASH_SEED", "20261121"))
EARLY_SHARE = 0.1  # rounds killed while the agent starts (before READY or just after)
MAX_START_S = 0.4  # a forked agent is READY about 0.35 s after its fork (measured)
MAX_WORK_S = 0.8  # a round is killed this long at most after its first answered sale
SPOOL_EVERY_S = 0.06
API_PAUSE_S = 0.04
INVALID_SHARE = 0.05
DRAIN_TIMEOUT = 180.0
REGISTER = "KASSE-1"
TORN_SHARE = 0.5  # power cuts where some unsynced writes reach the disk anyway


def _maybe_invalid(document: dict[str, Any], rng: random.Random) -> tuple[dict[str, Any], bool]:
    """The sale, or (now and then) one whose payments do not match its lines."""
    if rng.random() < INVALID_SHARE:
        return {**document, "payments": [{"method": "cash", "amount": "0.01"}]}, False
    return document, True


class Feeder(threading.Thread, abc.ABC):
    """A POS thread; :meth:`finish` asks it to stop once everything it began is answered."""

    def __init__(self, name: str, seed: str) -> None:
        super().__init__(name=name, daemon=True)
        self.rng = random.Random(seed)
        self.finishing = threading.Event()
        self.abandon = threading.Event()  # stop at once, answered or not (a failed test)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.feed()
        except BaseException as exc:  # reported by the test, not lost in a thread
            self.error = exc

    @abc.abstractmethod
    def feed(self) -> None:
        """Send sales until told to finish (or to abandon)."""

    def check(self) -> None:
        """Raise what made the feeder stop, if anything did."""
        if self.error is not None:
            raise AssertionError(f"{self.name} failed: {self.error!r}") from self.error

    def finish(self, timeout: float) -> None:
        self.finishing.set()
        self.join(timeout)
        assert not self.is_alive(), f"{self.name} did not finish in {timeout} s"
        self.check()


class SpoolFeeder(Feeder):
    """Drops a sale file every ``SPOOL_EVERY_S`` seconds: ``s-NNNNN.json``."""

    def __init__(self, spool: Path, seed: str) -> None:
        super().__init__("spool-feeder", seed)
        self.inbox = spool / "in"
        self.dropped: dict[str, tuple[dict[str, Any], bool]] = {}  # name -> (sale, valid)

    def feed(self) -> None:
        self.inbox.mkdir(parents=True, exist_ok=True)  # the POS may come before the agent
        while not self.finishing.is_set():
            name = f"s-{len(self.dropped):05d}.json"
            document, valid = _maybe_invalid(sale(request_id=name[:-5]), self.rng)
            tmp = self.inbox / f".{name}.tmp"
            tmp.write_bytes(json.dumps(document).encode())
            os.rename(tmp, self.inbox / name)
            self.dropped[name] = (document, valid)
            time.sleep(self.rng.uniform(0, 2 * SPOOL_EVERY_S))


class ApiFeeder(Feeder):
    """Posts sales ``PREFIX-NNNNN``; each is repeated until it gets a 2xx or a 422.

    Each agent listens on a port the OS picked: every attempt goes to the address the
    data directory's ``api-address`` names (a killed agent's, refused, until the next
    one names its own).
    """

    def __init__(self, prefix: str, data_dir: Path, seed: str) -> None:
        super().__init__(f"api-feeder-{prefix}", seed)
        self.prefix = prefix
        self.address_file, self.token_file = data_dir / "api-address", data_dir / "api-token"
        self.answers: dict[str, list[tuple[int, dict[str, Any]]]] = {}  # 2xx and 422 only
        self.valid: dict[str, bool] = {}
        self.answered = 0  # 2xx answers, for the test to see progress
        self.in_flight = False

    def feed(self) -> None:
        with httpx.Client(timeout=10.0) as client:
            while not self.finishing.is_set():
                request_id = f"{self.prefix}-{len(self.valid):05d}"
                document, valid = _maybe_invalid(sale(request_id=request_id), self.rng)
                self.valid[request_id] = valid
                self._until_answered(client, request_id, document)
                time.sleep(self.rng.uniform(0, API_PAUSE_S))

    def _until_answered(
        self, client: httpx.Client, request_id: str, document: dict[str, Any]
    ) -> None:
        while not self.abandon.is_set():
            response = self._post(client, document)
            if response is not None and (response.is_success or response.status_code == 422):
                answer = (response.status_code, response.json())
                self.answers.setdefault(request_id, []).append(answer)
                self.answered += response.is_success
                # now and then a POS repeats a sale that was answered (a lost reply)
                if not (response.is_success and self.rng.random() < 0.05):
                    return
            elif response is not None:
                assert response.status_code == 503, f"{request_id}: {response.text}"
            time.sleep(0.05)

    def _post(self, client: httpx.Client, document: dict[str, Any]) -> httpx.Response | None:
        """The response, or None when the agent is down or died during the request."""
        try:
            token = self.token_file.read_text(encoding="ascii").strip()
            url = self.address_file.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return None  # the first start has not created it yet, or the API is not up
        self.in_flight = True
        try:
            return client.post(
                f"{url}/v1/receipts", json=document, headers={"Authorization": f"Bearer {token}"}
            )
        except httpx.TransportError:
            return None
        finally:
            self.in_flight = False


def run_round(
    launch: Launch,
    config: Path,
    rng: random.Random,
    feeders: list[ApiFeeder],
    inbox: Path,
    where: str,
    power: PowerCut | None,
) -> tuple[str, bool]:
    """Start the agent and SIGKILL it at a random moment (then cut its power, if
    ``power``); returns how it was killed and whether a sale was waiting or in flight."""
    agent = launch(config, env=None if power is None else power.env())
    try:
        if rng.random() < EARLY_SHARE:
            delay = rng.uniform(0.0, MAX_START_S)
            how = f"{delay * 1000:.0f} ms after the start"
            time.sleep(delay)
        else:
            agent.wait_ready()
            before = sum(f.answered for f in feeders)
            deadline = time.monotonic() + 60
            while sum(f.answered for f in feeders) == before:
                assert agent.proc.poll() is None, f"{where}: the agent died:\n{agent.tail()}"
                assert time.monotonic() < deadline, f"{where}: no sale answered:\n{agent.tail()}"
                time.sleep(0.01)
            delay = rng.uniform(0.0, MAX_WORK_S)
            how = f"{delay * 1000:.0f} ms after its first answer"
            time.sleep(delay)
        busy = any(f.in_flight for f in feeders) or any(inbox.glob("*.json"))
        alive = agent.proc.poll() is None
        status = agent.kill()
    finally:
        agent.close()
    assert alive, f"{where}: the agent ended on its own ({status}):\n{agent.tail()}"
    assert status == -signal.SIGKILL, f"{where}: exit status {status}"
    if power is not None:
        torn = rng.random() < TORN_SHARE
        power.cut(random.Random(rng.random()) if torn else None)
        how += f", {'torn' if torn else 'clean'} power cut"
    return how, busy


def drain(
    launch: Launch, config: Path, spool: Path, printer: TcpPrinter, feeders: list[Feeder]
) -> None:
    """The last, clean run: answer every sale, print every receipt, stop with SIGTERM."""
    agent = launch(config)
    agent.wait_ready()
    for feeder in feeders:
        feeder.finish(DRAIN_TIMEOUT)
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while any(any((spool / d).glob("*.json")) for d in ("in", "work")):
        assert time.monotonic() < deadline, f"the spool was not drained:\n{agent.tail()}"
        time.sleep(0.1)
    while not {r.result.qr for r in read_receipts(spool.parent)} <= set(printer.payloads()):
        assert time.monotonic() < deadline, f"the backlog was not printed:\n{agent.tail()}"
        time.sleep(0.1)
    assert agent.terminate() == 0, agent.tail()


def check_spool(spool: Path, feeder: SpoolFeeder, by_request: dict[str, Stored]) -> set[str]:
    """Exactly one answer per sale file; returns the request_ids answered with a receipt."""
    answered = set()
    for name, (document, valid) in feeder.dropped.items():
        result = spool / "out" / name.replace(".json", ".result.json")
        error = spool / "failed" / name.replace(".json", ".error.json")
        assert (result.exists(), error.exists()) == (valid, not valid), (
            f"{name} (valid: {valid}): result {result.exists()}, error {error.exists()}"
        )
        if valid:
            answer = json.loads(result.read_bytes())
            stored = by_request[document["request_id"]].result
            assert (answer["number"], answer["jws"]) == (stored.number, stored.jws), name
            answered.add(document["request_id"])
        else:
            assert json.loads(error.read_bytes())["field"] == "payments", name
            assert (spool / "failed" / name).exists(), f"{name}: the failed sale was lost"
            assert document["request_id"] not in by_request, f"{name}: invalid but issued"
    for directory in ("in", "work"):
        assert list((spool / directory).iterdir()) == [], f"{directory}/ is not empty"
    temporary = [p.name for d in ("out", "failed") for p in (spool / d).glob(".*")]
    assert temporary == [], f"temporary files left: {temporary[:5]}"
    return answered


def check_api(feeders: list[ApiFeeder], by_request: dict[str, Stored]) -> set[str]:
    """Every 2xx names the stored receipt; returns the request_ids answered with one."""
    answered = set()
    for feeder in feeders:
        for request_id, valid in feeder.valid.items():
            answers = feeder.answers.get(request_id, [])
            assert answers, f"{request_id}: never answered"
            if not valid:
                assert [code for code, _ in answers] == [422], f"{request_id}: {answers}"
                assert request_id not in by_request, f"{request_id}: invalid but issued"
                continue
            stored = by_request[request_id].result
            for code, body in answers:
                assert code in (200, 201), f"{request_id}: {code} {body}"
                assert (body["number"], body["jws"]) == (stored.number, stored.jws), request_id
            answered.add(request_id)
    return answered


def till_agent(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    """Run a ``till-agent`` command (not ``run``) in a clean environment."""
    return subprocess.run(
        [str(TILL_AGENT), *args],
        env=agent_env(home),
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )


def verify_with_the_cli(data_dir: Path, tmp_path: Path) -> str:
    """``till-agent export dep`` + ``export crypto-container`` + ``verify``; its output."""
    dep, container = tmp_path / "dep.json", tmp_path / "container.json"
    common = ("--register", REGISTER, "--data-dir", str(data_dir))
    for what, file in (("dep", dep), ("crypto-container", container)):
        done = till_agent("export", what, "-o", str(file), *common, home=tmp_path / "home")
        assert done.returncode == 0, done.stdout + done.stderr
    done = till_agent("verify", str(dep), str(container), home=tmp_path / "home")
    assert done.returncode == 0, f"the DEP does not verify:\n{done.stdout[-3000:]}{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_shim(tmp_path_factory.mktemp("shim"))


@pytest.fixture(params=["sigkill", "power cut"])
def power(request: pytest.FixtureRequest, tmp_path: Path) -> PowerCut | None:
    """None: SIGKILL only; else the power cut of the data directory ``tmp_path/data``."""
    if request.param == "sigkill":
        return None
    return PowerCut(request.getfixturevalue("shim"), tmp_path / "data", tmp_path / "synced")


@pytest.fixture(name="launch")
def _forked_launch(tmp_path: Path, power: PowerCut | None) -> Iterator[Launch]:
    """``till-agent run`` forked from one interpreter that imported it once
    (tests/zygote.py, e2e/run_child.py): each of the 51 starts costs a fork instead of a
    new interpreter's imports. Every agent is killed at teardown."""
    started: list[Agent] = []
    with Zygote(RUN_CHILD, env=None if power is None else power.env()) as zygote:

        def spawn(args: list[str], env: dict[str, str], cwd: Path, log: int) -> Forked:
            return zygote.spawn_logged(args[1:], cwd=cwd, env=env, log=log)

        yield launcher(tmp_path, started, spawn)
        for agent in started:
            agent.close()


@pytest.mark.slow
def test_sigkill_mid_stream_loses_and_duplicates_nothing(
    launch: Launch, tmp_path: Path, printer: TcpPrinter, power: PowerCut | None
) -> None:
    """50 SIGKILLs (or power cuts) while spool and API sales stream in; ``CRASH_SEED``
    changes the seed."""
    started = time.monotonic()
    rng = random.Random(SEED)
    data_dir = tmp_path / "data"
    config = agent_config(tmp_path / "agent.toml", data_dir, printer_port=printer.port)
    spool_feeder = SpoolFeeder(data_dir / "spool", f"{SEED}-spool")
    api_feeders = [ApiFeeder(f"a{i}", data_dir, f"{SEED}-api{i}") for i in range(2)]
    feeders: list[Feeder] = [spool_feeder, *api_feeders]
    kills: list[tuple[str, bool]] = []
    try:
        for feeder in feeders:
            feeder.start()
        for round_no in range(ROUNDS):
            where = f"seed {SEED} (CRASH_SEED), round {round_no}"
            for feeder in feeders:
                feeder.check()
            inbox = data_dir / "spool" / "in"
            kills.append(run_round(launch, config, rng, api_feeders, inbox, where, power))
        drain(launch, config, data_dir / "spool", printer, feeders)
    finally:
        for feeder in feeders:
            feeder.abandon.set()
            feeder.finishing.set()
        for feeder in feeders:
            feeder.join(30)

    receipts = read_receipts(data_dir)
    numbers = [r.result.number for r in receipts]
    assert numbers == list(range(1, len(receipts) + 1)), f"seed {SEED}: a gap or a duplicate"
    assert {r.result.register_id for r in receipts} == {REGISTER}
    requests = Counter(r.request_id for r in receipts if r.request_id is not None)
    assert [k for k, n in requests.items() if n > 1] == [], f"seed {SEED}: a sale issued twice"
    by_request = {r.request_id: r for r in receipts if r.request_id is not None}
    answered = check_spool(data_dir / "spool", spool_feeder, by_request)
    answered |= check_api(api_feeders, by_request)
    assert set(by_request) == answered, f"seed {SEED}: receipts nobody was told about"
    unrequested = [r.result.kind for r in receipts if r.request_id is None]
    assert "standard" not in unrequested, unrequested

    printed = Counter(printer.payloads())
    assert {r.result.qr for r in receipts} == set(printed), (
        f"seed {SEED}: printed receipts differ from stored ones"
    )
    report = verify_with_the_cli(data_dir, tmp_path)

    with (
        closing(open_till_db(data_dir, writer=False, migrate=False)) as db,
        db.engine.connect() as conn,
    ):
        assert verify_journal(conn) == [], f"seed {SEED}: the journal is broken"

    duplicates = sum(n - 1 for n in printed.values())
    early = sum("after the start" in how for how, _ in kills)
    busy = sum(busy for _, busy in kills)
    states = Counter(r.result.signature_state for r in receipts)
    print(
        f"\nrun {'SIGKILL' if power is None else 'power-cut'} test (seed {SEED}): "
        f"{len(kills)} kills ({early} while starting, "
        f"{busy} with a sale waiting or in flight), signature states {dict(states)}, "
        f"{len(receipts)} receipts ({len(spool_feeder.dropped)} spool files, "
        f"{sum(len(f.valid) for f in api_feeders)} API sales), {duplicates} printed twice, "
        f"{len(printer.jobs)} print jobs; verify: {report.strip().splitlines()[-1]}; "
        f"{time.monotonic() - started:.1f} s"
    )
    assert len(kills) == ROUNDS
    assert busy >= ROUNDS // 2, f"seed {SEED}: only {busy} kills landed mid-stream"
