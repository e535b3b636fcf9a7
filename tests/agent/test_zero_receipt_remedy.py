"""A zero receipt while unsigned receipts of its register wait for their remedy
(agent/receipts.py ReceiptService.zero_receipt, the local API's zero receipt and
``till-agent special KASSE-1 null``).

It issues the remedy as recovery does (``outage recover``, the probe; DESIGN.md invariant
5): what the chain service holds is adopted, then the signed Nullbeleg, the Sammelbeleg and
the reissued sales. Before, it issued the Sammelbeleg at once, and the remedy's Nullbeleg,
Storno and reissue followed whenever recovery ran: a DEP valid all the same (rksv.md 5
allows the Sammelbeleg right after the last failed receipt), but in another order than
recovery's, and from the command line the sale waited for ``outage recover``.

The chain service is the real fake on loopback (agent/fakes/chain_service.py).
"""

from __future__ import annotations

import io
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from agent.api import ApiServer, create_app, serve
from agent.api_backend import ServiceBackend
from agent.at_rksv.verify import verify_dep
from agent.contract import ReceiptResult
from agent.errors import WaitsForUnit
from agent.export import export_container, export_dep
from agent.fakes.chain_service import ChainServiceFake
from agent.outages import load_outages
from agent.receipts import Issued, ReceiptService
from factories import Run, expect, journal_events, sale
from storage import TillDB

REGISTER = "KASSE-1"
API_TOKEN = "test-token-0123456789abcdef"


def _receipts(db: TillDB) -> list[tuple[int, str, str, str | None]]:
    conn = sqlite3.connect(db.path)
    try:
        rows = conn.execute(
            "SELECT number, kind, signature_state, request_id FROM receipts"
            " WHERE register_id = ? ORDER BY number",
            (REGISTER,),
        )
        return [(int(n), str(k), str(s), r) for n, k, s, r in rows]
    finally:
        conn.close()


def _findings(db: TillDB) -> list[str]:
    buffer = io.StringIO()
    export_dep(db, REGISTER, buffer)
    report = verify_dep(json.loads(buffer.getvalue()), json.loads(export_container(db, REGISTER)))
    return [f"{f.receipt}: {f.rule}: {f.message}" for f in report.findings]


def _lose(service: ReceiptService, chain: ChainServiceFake, mode: str) -> int:
    """Sale 2 signed, sale 3 sent and its answer lost (``mode``): unsigned, outage open;
    the service then answers again."""
    assert service.issue(sale(request_id="a")).signature_state == "signed"
    chain.mode = mode  # type: ignore[assignment]
    lost = service.issue(sale(request_id="b"))
    assert lost.signature_state == "unsigned"
    assert service.outages.is_open(REGISTER)
    chain.mode = "up"
    return lost.number


def _wait_for_request(chain: ChainServiceFake, request: int) -> None:
    """Until the fake has read request ``request`` (its ``slow`` answer is still to come:
    the remedy that sent it holds the remedy lock)."""
    deadline = time.monotonic() + 30
    while chain.requests_seen < request:
        assert time.monotonic() < deadline, "the request never came"
        time.sleep(0.005)


def _by_recovery(service: ReceiptService) -> None:
    assert service.recover(REGISTER) is not None


def _zero_receipt_over_http(service: ReceiptService, request_id: str) -> httpx.Response:
    """POST /v1/registers/KASSE-1/zero-receipt on the real local API (loopback)."""
    server: ApiServer
    with serve(create_app(ServiceBackend(service), token=API_TOKEN), port=0) as server:
        return httpx.post(
            f"{server.url}/v1/registers/{REGISTER}/zero-receipt",
            json={"request_id": request_id},
            headers={"Authorization": f"Bearer {API_TOKEN}"},
            timeout=30,
        )


def _by_zero_receipt(service: ReceiptService) -> None:
    asked = _zero_receipt_over_http(service, "z-1")
    assert asked.status_code == 201, asked.text
    assert (asked.json()["kind"], asked.json()["signature_state"]) == ("sammelbeleg", "signed")


@pytest.mark.parametrize("remedy", [_by_recovery, _by_zero_receipt], ids=["recover", "zero"])
class TestTheSameOrderAsRecovery:
    def test_a_lost_request_nullbeleg_sammelbeleg_storno_reissue(
        self,
        chain_service: ReceiptService,
        chain: ChainServiceFake,
        remedy: Callable[[ReceiptService], None],
    ) -> None:
        """The service never got sale 3: both ways issue the signed Nullbeleg (4), the
        Sammelbeleg right after it (5), the Storno of 3 (6) and its reissue (7), and the
        DEP passes the verifier. The zero receipt asked for is that Sammelbeleg; its
        request_id is on the Nullbeleg, the first receipt the request issued."""
        service = chain_service
        lost = _lose(service, chain, "lose_request")
        remedy(service)
        asked = "z-1" if remedy is _by_zero_receipt else None
        assert _receipts(service.db)[lost - 1 :] == [
            (3, "standard", "unsigned", "b"),
            (4, "null", "signed", asked),
            (5, "sammelbeleg", "signed", None),
            (6, "storno", "signed", None),
            (7, "standard", "signed", None),
        ]
        assert service.unsigned(REGISTER) == []
        assert journal_events(service.db, "receipt.superseded") == [
            {"number": 3, "jws": None, "replacement": 7, "voided_by": 6}
        ]
        [outage] = load_outages(service.db.write_connection()._conn)
        assert (outage.first_number, outage.sammelbeleg_number) == (3, 5)
        assert service.recover(REGISTER) == []  # nothing left: exactly one Sammelbeleg
        assert _findings(service.db) == []

    def test_a_lost_response_is_adopted_and_the_sammelbeleg_follows(
        self,
        chain_service: ReceiptService,
        chain: ChainServiceFake,
        remedy: Callable[[ReceiptService], None],
    ) -> None:
        """The service signed sale 3, its answer was lost: both ways ask it first and adopt
        3; the Sammelbeleg follows, nothing is reissued."""
        service = chain_service
        lost = _lose(service, chain, "lose_response")
        remedy(service)
        assert [r[:3] for r in _receipts(service.db)[lost:]] == [(4, "sammelbeleg", "signed")]
        [adopted] = journal_events(service.db, "receipt.adopted")
        assert adopted["number"] == lost
        assert service.unsigned(REGISTER) == []
        assert _findings(service.db) == []


class TestZeroReceipt:
    def test_a_retry_of_the_request_gets_the_sammelbeleg(
        self, chain_service: ReceiptService, chain: ChainServiceFake
    ) -> None:
        """The request_id is the Sammelbeleg's: a retry gets it (200), nothing more."""
        service = chain_service
        _lose(service, chain, "lose_request")
        first = service.zero_receipt(REGISTER, "z-1")
        again = service.zero_receipt(REGISTER, "z-1")
        assert (again.created, again.result.number) == (False, first.result.number)
        assert len(_receipts(service.db)) == 7

    def test_without_an_open_outage_the_remedys_nullbeleg_is_the_zero_receipt(
        self, chain_service: ReceiptService, chain: ChainServiceFake
    ) -> None:
        """A till whose outage a Sammelbeleg closed while sale 3 waited for its remedy (a
        zero receipt of an earlier version; here a scenario replay's Sammelbeleg): the
        zero receipt asked for is the remedy's signed Nullbeleg, then the Storno and the
        reissue; no second Sammelbeleg, and nothing waits any more."""
        service = chain_service
        _lose(service, chain, "lose_request")
        service.issue_special(REGISTER, "sammelbeleg")  # 4
        assert not service.outages.is_open(REGISTER)
        asked = service.zero_receipt(REGISTER, "z-2")
        assert (asked.result.number, asked.result.kind) == (5, "null")
        assert _receipts(service.db)[4:] == [
            (5, "null", "signed", "z-2"),
            (6, "storno", "signed", None),
            (7, "standard", "signed", None),
        ]
        assert service.unsigned(REGISTER) == []
        assert service.recover(REGISTER) == []
        assert _findings(service.db) == []

    def test_a_remedy_that_reissues_nothing_is_followed_by_the_nullbeleg(
        self, chain_service: ReceiptService, chain: ChainServiceFake
    ) -> None:
        """Sale 3 adopted after its outage was closed: the remedy issues no receipt, so the
        zero receipt asked for is a Nullbeleg after it, as without unsigned receipts."""
        service = chain_service
        _lose(service, chain, "lose_response")
        service.issue_special(REGISTER, "sammelbeleg")  # 4
        asked = service.zero_receipt(REGISTER, "z-3")
        assert _receipts(service.db)[4:] == [(5, "null", "signed", "z-3")]
        assert asked.result.number == 5
        assert len(journal_events(service.db, "receipt.adopted")) == 1

    def test_a_service_that_cannot_be_asked_issues_nothing(
        self, chain_service: ReceiptService, chain: ChainServiceFake
    ) -> None:
        """While the chain service cannot say whether it holds sale 3, the zero receipt
        waits (503 through the API) and issues nothing; once it answers, the remedy."""
        service = chain_service
        _lose(service, chain, "lose_request")
        chain.mode = "down"
        with pytest.raises(WaitsForUnit, match="unsigned receipts whose remedy comes before"):
            service.zero_receipt(REGISTER, "z-4")
        waits = _zero_receipt_over_http(service, "z-4")
        assert (waits.status_code, waits.json()["rule"]) == (503, "waits-for-unit")
        assert len(_receipts(service.db)) == 3
        assert service.outages.is_open(REGISTER)
        chain.mode = "up"
        assert _zero_receipt_over_http(service, "z-4").json()["kind"] == "sammelbeleg"
        again = _zero_receipt_over_http(service, "z-4")  # the retry: the stored one
        assert (again.status_code, again.json()["number"]) == (200, 5)
        assert service.unsigned(REGISTER) == []


def test_special_null_on_the_command_line_issues_the_remedy_first(
    chain_service: ReceiptService,
    chain: ChainServiceFake,
    db: TillDB,
    run: Run,
    data_dir: Path,
) -> None:
    """``till-agent special KASSE-1 null`` after sale 3's answer was lost: the remedy in
    recovery's order, its Sammelbeleg the receipt shown, and nothing left for ``outage
    recover``; ``till-agent verify`` accepts the export."""
    _lose(chain_service, chain, "lose_request")
    db.close()  # the service's process ended; the command line opens the till
    shown = expect(run("special", REGISTER, "null", "--json", "--data-dir", data_dir), 0)
    assert (json.loads(shown.stdout)["kind"], json.loads(shown.stdout)["number"]) == (
        "sammelbeleg",
        5,
    )
    listed = expect(
        run("receipts", "list", "--register", REGISTER, "--json", "--data-dir", data_dir), 0
    )
    receipts = sorted(
        (r["number"], r["kind"], r["signature_state"]) for r in json.loads(listed.stdout)
    )
    assert receipts[2:] == [
        (3, "standard", "unsigned"),
        (4, "null", "signed"),
        (5, "sammelbeleg", "signed"),
        (6, "storno", "signed"),
        (7, "standard", "signed"),
    ]
    recovered = expect(run("outage", "recover", REGISTER, "--data-dir", data_dir), 0)
    assert "nothing was waiting for the unit" in recovered.stdout
    dep, container = data_dir / "dep.json", data_dir / "container.json"
    expect(run("export", "dep", "--register", REGISTER, "-o", dep, "--data-dir", data_dir), 0)
    args = ("--register", REGISTER, "-o", container, "--data-dir", data_dir)
    expect(run("export", "crypto-container", *args), 0)
    expect(run("verify", dep, container), 0)


def test_a_zero_receipt_asked_while_the_probe_remedies_waits_for_that_remedy(
    chain_service: ReceiptService, chain: ChainServiceFake
) -> None:
    """The probe's recovery asks the (slow) service about sale 3 when the POS asks for a
    zero receipt: one remedy at a time, so the zero receipt does not reissue sale 3 a
    second time; it finds nothing left and is a Nullbeleg after the remedy."""
    service = chain_service
    _lose(service, chain, "lose_request")
    chain.delay, chain.mode = 0.3, "slow"  # every request answered after 0.3 s
    recovered: list[list[ReceiptResult] | None] = []
    probe = threading.Thread(target=lambda: recovered.append(service.recover(REGISTER)))
    seen = chain.requests_seen
    probe.start()
    _wait_for_request(chain, seen + 1)  # the recovery's lookup of sale 3 is under way
    asked = service.zero_receipt(REGISTER, "z-5")
    probe.join(30)
    [issued] = recovered
    assert [r.kind for r in issued or []] == ["null", "sammelbeleg", "storno", "standard"]
    assert (asked.result.number, asked.result.kind) == (8, "null")
    assert len(journal_events(service.db, "receipt.superseded")) == 1
    assert _findings(service.db) == []


def test_a_retry_while_its_remedy_runs_gets_the_same_sammelbeleg(
    chain_service: ReceiptService, chain: ChainServiceFake
) -> None:
    """The POS times out and sends the same request_id while the remedy it started still
    waits for the (slow) service: the retry waits for that remedy and gets its
    Sammelbeleg (200), not a second remedy or a second zero receipt."""
    service = chain_service
    _lose(service, chain, "lose_request")
    chain.delay, chain.mode = 0.3, "slow"
    first: list[Issued] = []
    asking = threading.Thread(target=lambda: first.append(service.zero_receipt(REGISTER, "z-6")))
    seen = chain.requests_seen
    asking.start()
    _wait_for_request(chain, seen + 1)  # its lookup of sale 3 is under way
    again = service.zero_receipt(REGISTER, "z-6")
    asking.join(30)
    [created] = first
    assert (created.created, again.created) == (True, False)
    assert again.result.number == created.result.number == 5
    assert len(_receipts(service.db)) == 7


def _after_lost_storno(service: ReceiptService, chain: ChainServiceFake) -> None:
    """Sale 7 while the outage the lost Storno opened is open (fallback), recovery after:
    Nullbeleg 8, Sammelbeleg 9 right after it, the reissue of 3 (10; Storno 6 stands for
    the remedy's Storno, adopted); nothing waits, ``verify`` passes."""
    assert service.issue(sale(request_id="c")).signature_state == "fallback"
    issued = service.recover(REGISTER)
    assert [(r.number, r.kind, r.signature_state) for r in issued or []] == [
        (8, "null", "signed"),
        (9, "sammelbeleg", "signed"),
        (10, "standard", "signed"),
    ]
    assert service.unsigned(REGISTER) == []
    assert _findings(service.db) == []


class TestALostAnswerInTheRemedy:
    """The chain service loses the answer to the remedy's Storno (request 4: the lookup
    of sale 3, Nullbeleg 4, Sammelbeleg 5, Storno 6)."""

    def test_the_zero_receipt_is_its_committed_sammelbeleg_and_the_reissue_waits(
        self, chain_service: ReceiptService, chain: ChainServiceFake
    ) -> None:
        """201 with the signed Sammelbeleg 5 that closed the outage (before: 503 though
        committed); no reissue is signed inside the outage Storno 6 opened (before: 7 was,
        and after a fallback sale the DEP failed verify with sammelbeleg-missing)."""
        service = chain_service
        _lose(service, chain, "lose_request")
        chain.handle_once(chain.requests_seen + 4, "lose_response")
        asked = _zero_receipt_over_http(service, "z-7")
        assert asked.status_code == 201, asked.text
        assert (asked.json()["number"], asked.json()["signature_state"]) == (5, "signed")
        assert _receipts(service.db)[3:] == [
            (4, "null", "signed", "z-7"),
            (5, "sammelbeleg", "signed", None),
            (6, "storno", "unsigned", None),
        ]
        again = _zero_receipt_over_http(service, "z-7")
        assert (again.status_code, again.json()["number"]) == (200, 5)
        _after_lost_storno(service, chain)

    def test_recover_commits_what_came_before_and_the_reissue_waits(
        self, chain_service: ReceiptService, chain: ChainServiceFake
    ) -> None:
        """recover (the probe, ``outage recover``): the same remedy, answered as before
        (the unit failed again: ``None``, a new outage); the reissue waits for the next."""
        service = chain_service
        _lose(service, chain, "lose_request")
        chain.handle_once(chain.requests_seen + 4, "lose_response")
        assert service.recover(REGISTER) is None
        assert [r[:3] for r in _receipts(service.db)[3:]] == [
            (4, "null", "signed"),
            (5, "sammelbeleg", "signed"),
            (6, "storno", "unsigned"),
        ]
        _after_lost_storno(service, chain)

    def test_special_null_shows_the_sammelbeleg_and_the_new_outage(
        self,
        chain_service: ReceiptService,
        chain: ChainServiceFake,
        db: TillDB,
        run: Run,
        data_dir: Path,
    ) -> None:
        """Exit 0 with Sammelbeleg 5 (before: exit 4 "the outage stays open", and a
        failed probe recorded on the new outage); stderr names the remedy's receipts and
        the new outage; ``outage recover`` then issues the rest."""
        _lose(chain_service, chain, "lose_request")
        db.close()
        base = chain.requests_seen
        chain.handle_once(base + 5, "lose_request")
        chain.handle_once(base + 6, "lose_request")  # the CLI sends it again once
        shown = expect(run("special", REGISTER, "null", "--json", "--data-dir", data_dir), 0)
        assert (json.loads(shown.stdout)["number"], json.loads(shown.stdout)["kind"]) == (
            5,
            "sammelbeleg",
        )
        assert "issued: #4 null signed, #6 storno unsigned; outage 2 is open" in shown.stderr
        listed = json.loads(
            expect(run("outage", "list", "--json", "--data-dir", data_dir), 0).stdout
        )
        assert [o.get("probes_failed", 0) for o in listed if o["id"] == 2] in ([0], [])
        expect(run("outage", "recover", REGISTER, "--data-dir", data_dir), 0)
        dep, container = data_dir / "dep.json", data_dir / "container.json"
        expect(run("export", "dep", "--register", REGISTER, "-o", dep, "--data-dir", data_dir), 0)
        args = ("--register", REGISTER, "-o", container, "--data-dir", data_dir)
        expect(run("export", "crypto-container", *args), 0)
        expect(run("verify", dep, container), 0)


def test_retries_while_every_signing_answer_is_lost_issue_one_nullbeleg(
    chain_service: ReceiptService, chain: ChainServiceFake
) -> None:
    """The service answers lookups but loses every new receipt's answer: the first
    request issues the remedy's Nullbeleg (4, unsigned, holding the request_id); its
    retries wait (503) and issue nothing (before: a new Nullbeleg each). Once the service
    answers, recovery adopts 4 and closes the outage; the retry gets that Sammelbeleg."""
    service = chain_service
    _lose(service, chain, "lose_request")
    chain.mode = "lose_put_response"
    for _ in range(3):
        with pytest.raises(WaitsForUnit):
            service.zero_receipt(REGISTER, "z-8")
    assert _receipts(service.db)[3:] == [(4, "null", "unsigned", "z-8")]
    retried = _zero_receipt_over_http(service, "z-8")
    assert (retried.status_code, retried.json()["rule"]) == (503, "waits-for-unit")
    chain.mode = "up"
    assert [r.kind for r in service.recover(REGISTER) or []] == [
        "null",
        "sammelbeleg",
        "storno",
        "standard",
    ]
    [adopted] = journal_events(service.db, "receipt.adopted")
    assert adopted["number"] == 4
    again = _zero_receipt_over_http(service, "z-8")
    assert (again.status_code, again.json()["number"], again.json()["kind"]) == (
        200,
        6,
        "sammelbeleg",
    )
    assert _findings(service.db) == []


class TestARetryIsAnsweredAsTheFirstCall:
    """The request_id of a zero receipt whose remedy reissues a sale is on the remedy's
    Nullbeleg; a retry is answered with the Sammelbeleg that closed the outage open when
    that Nullbeleg was stored (review: an outage a failed probe opened has no first
    receipt, and a retry got the Nullbeleg), or waits while it is open; a ``kind: null``
    sale repeating the request is answered the same way (it got the Nullbeleg)."""

    def _probe_opened(self, service: ReceiptService, chain: ChainServiceFake) -> None:
        _lose(service, chain, "lose_request")  # sale 3 unsigned, outage 1
        service.issue_special(REGISTER, "sammelbeleg")  # closes outage 1, sale 3 waits
        service.record_probe(REGISTER, False, "the unit did not answer")  # outage 2
        assert service.outages.is_open(REGISTER)

    def test_an_outage_a_failed_probe_opened(
        self, chain_service: ReceiptService, chain: ChainServiceFake
    ) -> None:
        self._probe_opened(chain_service, chain)
        first = chain_service.zero_receipt(REGISTER, "z")
        assert first.result.kind == "sammelbeleg"
        again = chain_service.zero_receipt(REGISTER, "z")
        assert (again.created, again.result.number) == (False, first.result.number)
        assert _findings(chain_service.db) == []

    def test_an_outage_a_failed_probe_opened_still_open(
        self, chain_service: ReceiptService, chain: ChainServiceFake
    ) -> None:
        self._probe_opened(chain_service, chain)
        base = chain.requests_seen  # the lookup of sale 3, the Nullbeleg, the Sammelbeleg
        chain.handle_once(base + 3, "lose_request")
        chain.handle_once(base + 4, "lose_request")  # (its resend)
        with pytest.raises(WaitsForUnit):
            chain_service.zero_receipt(REGISTER, "z")
        assert _zero_receipt_over_http(chain_service, "z").status_code == 503

    def test_a_null_sale_repeating_the_request(
        self, chain_service: ReceiptService, chain: ChainServiceFake
    ) -> None:
        _lose(chain_service, chain, "lose_request")
        first = chain_service.zero_receipt(REGISTER, "z-1")
        assert first.result.kind == "sammelbeleg"
        again = chain_service.issue_once(
            {"request_id": "z-1", "register": REGISTER, "kind": "null"}
        )
        assert (again.created, again.result.number) == (False, first.result.number)

    def test_a_null_sale_repeating_the_request_while_its_outage_is_open(
        self, chain_service: ReceiptService, chain: ChainServiceFake
    ) -> None:
        _lose(chain_service, chain, "lose_request")
        base = chain.requests_seen
        chain.handle_once(base + 3, "lose_request")  # the Sammelbeleg's answer
        chain.handle_once(base + 4, "lose_request")
        with pytest.raises(WaitsForUnit):
            chain_service.zero_receipt(REGISTER, "z-1")
        with pytest.raises(WaitsForUnit):
            chain_service.issue_once({"request_id": "z-1", "register": REGISTER, "kind": "null"})
