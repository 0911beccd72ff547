"""The embedded ledger's journal: `verify` finds any edited, removed or reordered entry."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from computemesh.cli.main import app
from computemesh.identity import Identity, document_digest, sign_document
from computemesh.settlement import (
    EscrowTerms,
    LedgerSettings,
    SettlementError,
    SqliteLedger,
    attest_result,
)

CREDIT = 1_000_000
runner = CliRunner()


@pytest.fixture
def ledger_file(tmp_path: Path) -> Path:
    """A ledger with a deposit, a lock, a release and a stake: 5 entries."""
    author, consumer, provider = Identity.generate(), Identity.generate(), Identity.generate()
    path = tmp_path / "ledger.db"
    ledger = SqliteLedger.open(path, author, LedgerSettings(treasury=Identity.generate().did))
    ledger.deposit(consumer.did, 10 * CREDIT, deposit_id="d1")
    terms = EscrowTerms(
        contract_id=os.urandom(16).hex(),
        job_id=os.urandom(16).hex(),
        consumer=consumer.did,
        provider=provider.did,
        amount=4 * CREDIT,
    )
    ledger.lock(terms)
    result = attest_result(
        consumer, contract_id=terms.contract_id, result_id="ab" * 32, amount=3 * CREDIT
    )
    ledger.release(result)
    ledger.stake(provider.did, 1 * CREDIT, stake_id="s1")
    return path


def problems(path: Path) -> list[str]:
    return SqliteLedger.open(path, Identity.generate()).verify().problems


def sql(path: Path, statement: str, *args: object) -> None:
    with sqlite3.connect(path) as db:
        db.execute(statement, args)


def document(path: Path, seq: int) -> dict[str, object]:
    with sqlite3.connect(path) as db:
        (text,) = db.execute("SELECT document FROM ledger_entries WHERE seq = ?", (seq,)).fetchone()
    loaded: dict[str, object] = json.loads(text)
    return loaded


def test_an_untouched_ledger_verifies_and_conserves_supply(ledger_file: Path) -> None:
    report = SqliteLedger.open(ledger_file, Identity.generate()).verify()
    assert report.ok, report.problems
    assert (report.entries, report.supply) == (5, 10 * CREDIT)


def test_an_edited_posting_breaks_the_signature(ledger_file: Path) -> None:
    doc = document(ledger_file, 1)
    doc["body"]["postings"][0][1] = 20 * CREDIT  # type: ignore[index]
    sql(ledger_file, "UPDATE ledger_entries SET document = ? WHERE seq = 1", json.dumps(doc))
    found = problems(ledger_file)
    assert any("entry 1: signature" in p for p in found)


def test_an_entry_re_signed_by_another_key_is_caught(ledger_file: Path) -> None:
    forger = Identity.generate()
    body = document(ledger_file, 3)["body"]
    assert isinstance(body, dict)
    body["postings"] = [[account, delta * 2] for account, delta in body["postings"]]
    forged = sign_document(forger, "ledger-entry", body)
    sql(
        ledger_file,
        "UPDATE ledger_entries SET document = ?, hash = ? WHERE seq = 3",
        json.dumps(forged),
        document_digest(forged),
    )
    found = problems(ledger_file)
    assert any("not a ledger author" in p for p in found)
    assert any("entry 4: does not follow" in p for p in found)


def test_a_removed_entry_is_caught(ledger_file: Path) -> None:
    sql(ledger_file, "DELETE FROM ledger_entries WHERE seq = 2")
    found = problems(ledger_file)
    assert any("missing" in p for p in found)
    assert any("chain broken" in p for p in found)


def test_a_removed_last_entry_is_caught(ledger_file: Path) -> None:
    sql(ledger_file, "DELETE FROM ledger_entries WHERE seq = 4")
    assert any("head" in p for p in problems(ledger_file))


def test_reordered_entries_are_caught(ledger_file: Path) -> None:
    with sqlite3.connect(ledger_file) as db:
        db.execute("UPDATE ledger_entries SET seq = 100 WHERE seq = 2")
        db.execute("UPDATE ledger_entries SET seq = 2 WHERE seq = 3")
        db.execute("UPDATE ledger_entries SET seq = 3 WHERE seq = 100")
    found = problems(ledger_file)
    assert any("moved" in p for p in found)
    assert any("chain broken" in p for p in found)


def test_an_edited_balance_or_hash_is_caught(ledger_file: Path) -> None:
    sql(ledger_file, "UPDATE ledger_balances SET amount = amount + 1 WHERE account LIKE 'stake:%'")
    sql(ledger_file, "UPDATE ledger_entries SET hash = ? WHERE seq = 1", "0" * 64)
    found = problems(ledger_file)
    assert any("balance of stake:" in p for p in found)
    assert any("stored hash" in p for p in found)


def test_a_ledger_opened_with_other_settings_is_refused(ledger_file: Path) -> None:
    with pytest.raises(SettlementError) as info:
        SqliteLedger.open(
            ledger_file, Identity.generate(), LedgerSettings(treasury=Identity.generate().did)
        )
    assert info.value.code == "settings_mismatch"


def test_cli_ledger_verify_reports_tampering(ledger_file: Path, tmp_path: Path) -> None:
    home = ["--home", str(tmp_path / "home")]
    ok = runner.invoke(app, [*home, "ledger", "verify", "--ledger", str(ledger_file), "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["ok"] is True
    sql(ledger_file, "DELETE FROM ledger_entries WHERE seq = 1")
    bad = runner.invoke(app, [*home, "ledger", "verify", "--ledger", str(ledger_file), "--json"])
    assert bad.exit_code == 1
    assert json.loads(bad.output)["problems"]


def test_cli_wallet_deposit_stake_balance_and_history(tmp_path: Path) -> None:
    home = ["--home", str(tmp_path / "home")]
    assert runner.invoke(app, [*home, "ledger", "init"]).exit_code == 0
    deposit = runner.invoke(app, [*home, "wallet", "deposit", "12.5", "--id", "d1", "--json"])
    assert deposit.exit_code == 0, deposit.output
    assert runner.invoke(app, [*home, "wallet", "stake", "2", "--id", "s1"]).exit_code == 0
    balance = runner.invoke(app, [*home, "wallet", "balance", "--json"])
    data = json.loads(balance.output)
    assert (data["available"], data["escrowed"], data["staked"]) == (10_500_000, 0, 2_000_000)
    history = json.loads(runner.invoke(app, [*home, "wallet", "history", "--json"]).output)
    assert [row["op"] for row in history["history"]] == ["deposit", "stake"]
    too_much = runner.invoke(app, [*home, "wallet", "stake", "100", "--json"])
    assert too_much.exit_code == 1
    assert json.loads(too_much.output)["error"]["code"] == "insufficient_funds"


def test_cli_wallet_without_a_ledger_says_how_to_make_one(tmp_path: Path) -> None:
    result = runner.invoke(app, ["--home", str(tmp_path), "wallet", "balance", "--json"])
    assert result.exit_code == 1
    assert json.loads(result.output)["error"]["code"] == "no_ledger"


def test_a_cut_tail_with_the_head_rewritten_to_match_is_caught(ledger_file: Path) -> None:
    with sqlite3.connect(ledger_file) as db:
        (last_hash,) = db.execute("SELECT hash FROM ledger_entries WHERE seq = 2").fetchone()
        db.execute("DELETE FROM ledger_entries WHERE seq > 2")
        db.execute("UPDATE ledger_head SET seq = 2, hash = ?", (last_hash,))
    assert any("signed head names another last entry" in p for p in problems(ledger_file))
    sql(ledger_file, "UPDATE ledger_head SET document = NULL")
    assert any("head is not signed" in p for p in problems(ledger_file))


def test_a_head_re_signed_by_another_key_is_caught(ledger_file: Path) -> None:
    with sqlite3.connect(ledger_file) as db:
        (last_hash,) = db.execute("SELECT hash FROM ledger_entries WHERE seq = 3").fetchone()
        db.execute("DELETE FROM ledger_entries WHERE seq = 4")
        forged = sign_document(
            Identity.generate(), "ledger-head", {"seq": 3, "hash": last_hash, "entries": 4}
        )
        db.execute(
            "UPDATE ledger_head SET seq = 3, hash = ?, document = ?",
            (last_hash, json.dumps(forged)),
        )
    assert any("not a ledger author" in p for p in problems(ledger_file))


def test_a_ledger_from_before_signed_heads_opens_and_reports_its_unsigned_head(
    ledger_file: Path,
) -> None:
    with sqlite3.connect(ledger_file) as db:
        db.execute("ALTER TABLE ledger_head DROP COLUMN document")
    assert any("head is not signed" in p for p in problems(ledger_file))
