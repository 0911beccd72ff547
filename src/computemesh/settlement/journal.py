"""The embedded ledger's journal: double-entry, signed, hash-chained entries in SQLite.

Each entry is a ``ledger-entry`` document signed by its author; its body is::

    {"seq": n, "prev": <hash of entry n-1>, "op", "op_id",
     "postings": [[account, delta], ...], "data": {...}, "at_ms": ...}

The postings of an entry add up to zero (double entry). An entry's hash is the SHA-256 of
its whole signed document (``document_digest``), and the next entry names it as ``prev``,
so editing, removing or reordering any entry breaks the chain from there on. The head
(last seq and hash) is kept beside the entries as a ``ledger-head`` document signed by the
author of the last append (``{"seq", "hash", "entries"}``), so removing the last entries
shows too: rewriting the head to match a shortened journal needs an author's key.

Accounts are text: ``available:<did>``, ``stake:<did>``, ``escrow:<contract id>`` and
``issuance``, the outside world deposits come from. Only ``issuance`` may go negative;
the sum over all accounts is always zero, so the supply (money held inside the ledger) is
exactly what was deposited. ``ledger_balances`` and ``ledger_escrows`` are caches the
verifier recomputes from the entries.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Integer,
    String,
    Text,
    create_engine,
    event,
    inspect,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from computemesh.identity import Identity, document_digest, sign_document, verify_document
from computemesh.models.errors import IdentityError
from computemesh.settlement.errors import SettlementError

ENTRY_KIND = "ledger-entry"
HEAD_KIND = "ledger-head"
GENESIS_PREV = "0" * 64
ISSUANCE = "issuance"

Posting = tuple[str, int]


def available_account(did: str) -> str:
    return f"available:{did}"


def stake_account(did: str) -> str:
    return f"stake:{did}"


def escrow_account(contract_id: str) -> str:
    return f"escrow:{contract_id}"


class JournalBase(DeclarativeBase):
    pass


class EntryRow(JournalBase):
    __tablename__ = "ledger_entries"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    op_id: Mapped[str] = mapped_column(String(160), unique=True)
    op: Mapped[str] = mapped_column(String(16))
    document: Mapped[str] = mapped_column(Text)
    hash: Mapped[str] = mapped_column(String(64))
    receipt: Mapped[str | None] = mapped_column(Text, nullable=True)


class HeadRow(JournalBase):
    __tablename__ = "ledger_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))
    document: Mapped[str | None] = mapped_column(Text, nullable=True)


class BalanceRow(JournalBase):
    __tablename__ = "ledger_balances"

    account: Mapped[str] = mapped_column(String(200), primary_key=True)
    amount: Mapped[int] = mapped_column(BigInteger)


class EscrowRow(JournalBase):
    __tablename__ = "ledger_escrows"

    contract_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    consumer: Mapped[str] = mapped_column(String(128), index=True)
    provider: Mapped[str] = mapped_column(String(128))
    creator: Mapped[str | None] = mapped_column(String(128), nullable=True)
    locked: Mapped[int] = mapped_column(BigInteger)
    released: Mapped[int] = mapped_column(BigInteger, default=0)
    refunded: Mapped[int] = mapped_column(BigInteger, default=0)
    closed: Mapped[bool] = mapped_column(Boolean, default=False)


class PartyRow(JournalBase):
    """Which DIDs an entry involved, for ``history``."""

    __tablename__ = "ledger_parties"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    did: Mapped[str] = mapped_column(String(128), index=True)
    seq: Mapped[int] = mapped_column(Integer)


class BindingRow(JournalBase):
    __tablename__ = "ledger_bindings"

    did: Mapped[str] = mapped_column(String(128), primary_key=True)
    address: Mapped[str] = mapped_column(String(42), primary_key=True)


def _begin_immediate(engine: Engine) -> None:
    """Take SQLite's write lock at BEGIN, so two writers never interleave an append."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def open_journal(url: str) -> sessionmaker[Session]:
    """Connect to a ledger database, creating its tables if missing."""
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        _begin_immediate(engine)
    JournalBase.metadata.create_all(engine)
    _add_head_signature_column(engine)
    return sessionmaker(engine, expire_on_commit=False)


def _add_head_signature_column(engine: Engine) -> None:
    """Ledgers created before heads were signed lack the column; their head stays unsigned
    (``verify`` reports it) until the next append signs it."""
    columns = {column["name"] for column in inspect(engine).get_columns(HeadRow.__tablename__)}
    if "document" not in columns:
        with engine.begin() as connection:
            connection.exec_driver_sql("ALTER TABLE ledger_head ADD COLUMN document TEXT")


def head(session: Session) -> HeadRow | None:
    return session.get(HeadRow, 1)


def entry_body(row: EntryRow) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(row.document)["body"]
    return body


def append_entry(
    session: Session,
    author: Identity,
    *,
    op: str,
    op_id: str,
    postings: Sequence[Posting],
    data: dict[str, Any],
    at_ms: int,
) -> EntryRow:
    """Sign and append one entry, applying its postings to the balance cache.

    Raises ``SettlementError`` (``unbalanced``) if the postings do not add up to zero, and
    ``insufficient_funds`` if an account other than ``issuance`` would go negative; the
    caller's transaction then rolls back.
    """
    merged = _merge(postings)
    if sum(delta for _, delta in merged) != 0:
        raise SettlementError(f"entry {op_id} does not balance", code="unbalanced")
    for account, delta in merged:
        _apply_posting(session, account, delta)
    current = head(session)
    seq = 0 if current is None else current.seq + 1
    body = {
        "seq": seq,
        "prev": GENESIS_PREV if current is None else current.hash,
        "op": op,
        "op_id": op_id,
        "postings": [[account, delta] for account, delta in merged],
        "data": data,
        "at_ms": at_ms,
    }
    document = sign_document(author, ENTRY_KIND, body)
    digest = document_digest(document)
    row = EntryRow(seq=seq, op_id=op_id, op=op, document=json.dumps(document), hash=digest)
    session.add(row)
    signed_head = json.dumps(sign_document(author, HEAD_KIND, head_body(seq, digest)))
    if current is None:
        session.add(HeadRow(id=1, seq=seq, hash=digest, document=signed_head))
    else:
        current.seq, current.hash, current.document = seq, digest, signed_head
    session.flush()
    return row


def head_body(seq: int, digest: str) -> dict[str, Any]:
    """What a signed head states: the last entry's seq and hash, and how many entries."""
    return {"seq": seq, "hash": digest, "entries": seq + 1}


def balance_of(session: Session, account: str) -> int:
    row = session.get(BalanceRow, account)
    return 0 if row is None else row.amount


def record_parties(session: Session, seq: int, dids: Iterable[str | None]) -> None:
    for did in sorted({d for d in dids if d}):
        session.add(PartyRow(did=did, seq=seq))


def _merge(postings: Sequence[Posting]) -> list[Posting]:
    totals: dict[str, int] = {}
    for account, delta in postings:
        if not isinstance(delta, int) or isinstance(delta, bool):
            raise SettlementError("a posting is an integer number of units", code="bad_amount")
        totals[account] = totals.get(account, 0) + delta
    return [(account, delta) for account, delta in sorted(totals.items()) if delta != 0]


def _apply_posting(session: Session, account: str, delta: int) -> None:
    row = session.get(BalanceRow, account)
    new = (0 if row is None else row.amount) + delta
    if new < 0 and account != ISSUANCE:
        raise SettlementError(
            f"{account} would go negative ({new} units)", code="insufficient_funds"
        )
    if row is None:
        session.add(BalanceRow(account=account, amount=new))
    else:
        row.amount = new


@dataclass
class JournalReport:
    """What ``verify_journal`` found; ``ok`` when ``problems`` is empty."""

    entries: int = 0
    head: str = GENESIS_PREV
    supply: int = 0
    authors: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "head": self.head,
            "supply": self.supply,
            "authors": self.authors,
            "problems": self.problems,
        }


def verify_journal(session: Session) -> JournalReport:
    """Check every entry from genesis on; report each problem found (never raises).

    Detects: a missing or extra seq, an entry whose ``seq`` or ``prev`` does not follow its
    predecessor, a stored hash that is not the document's, a signature that does not verify
    or is not by a genesis author, postings that do not balance, an account other than
    ``issuance`` going negative, a head that is not the last entry or whose signature (by
    a genesis author) does not vouch for it, and balance or escrow caches that differ from
    the replayed entries.
    """
    report = JournalReport()
    balances: dict[str, int] = defaultdict(int)
    rows = session.scalars(select(EntryRow).order_by(EntryRow.seq)).all()
    prev = GENESIS_PREV
    for position, row in enumerate(rows):
        body = _check_entry(row, position, prev, report)
        prev = row.hash
        if body is not None:
            _replay(body, balances, report)
    report.entries = len(rows)
    report.head = prev
    _check_head(session, rows, report)
    _check_caches(session, balances, report)
    report.supply = -balances.get(ISSUANCE, 0)
    if sum(balances.values()) != 0:
        report.problems.append("the accounts do not add up to zero: supply not conserved")
    return report


def _check_entry(
    row: EntryRow, position: int, prev: str, report: JournalReport
) -> dict[str, Any] | None:
    where = f"entry {row.seq}"
    if row.seq != position:
        report.problems.append(f"{where}: expected seq {position} (an entry is missing)")
    try:
        document = json.loads(row.document)
        body = verify_document(document, kind=ENTRY_KIND)
    except (ValueError, IdentityError) as exc:
        report.problems.append(f"{where}: signature or format does not check: {exc}")
        return None
    if position == 0:
        authors = body.get("data", {}).get("authors")
        report.authors = (
            [a for a in authors if isinstance(a, str)] if isinstance(authors, list) else []
        )
    if document["signer"] not in report.authors:
        report.problems.append(f"{where}: signed by {document['signer']}, not a ledger author")
    if body.get("seq") != row.seq:
        report.problems.append(f"{where}: its signed seq is {body.get('seq')} (moved)")
    if body.get("prev") != prev:
        report.problems.append(f"{where}: does not follow the previous entry (chain broken)")
    if document_digest(document) != row.hash:
        report.problems.append(f"{where}: stored hash is not the entry's hash")
    return body


def _replay(body: dict[str, Any], balances: dict[str, int], report: JournalReport) -> None:
    postings = body.get("postings")
    if not isinstance(postings, list):
        report.problems.append(f"entry {body.get('seq')}: no postings list")
        return
    total = 0
    for account, delta in postings:
        balances[account] += delta
        total += delta
        if balances[account] < 0 and account != ISSUANCE:
            report.problems.append(f"entry {body.get('seq')}: {account} goes negative")
    if total != 0:
        report.problems.append(f"entry {body.get('seq')}: postings do not balance")


def _check_head(session: Session, rows: Sequence[EntryRow], report: JournalReport) -> None:
    current = head(session)
    if not rows:
        return
    if current is None or current.seq != rows[-1].seq or current.hash != rows[-1].hash:
        report.problems.append("the head does not name the last entry (entries removed?)")
        return
    problem = _head_signature_problem(current, len(rows), report.authors)
    if problem is not None:
        report.problems.append(problem)


def _head_signature_problem(current: HeadRow, entries: int, authors: list[str]) -> str | None:
    """Why the stored head's signature does not vouch for ``entries`` ending at the head."""
    if current.document is None:
        return "the head is not signed (entries removed and the head rewritten?)"
    try:
        document = json.loads(current.document)
        body = verify_document(document, kind=HEAD_KIND)
    except (ValueError, IdentityError) as exc:
        return f"the head's signature does not check: {exc}"
    if document["signer"] not in authors:
        return f"the head is signed by {document['signer']}, not a ledger author"
    if body != head_body(current.seq, current.hash) or entries != current.seq + 1:
        return "the signed head names another last entry (entries removed?)"
    return None


def _check_caches(session: Session, balances: dict[str, int], report: JournalReport) -> None:
    cached = {row.account: row.amount for row in session.scalars(select(BalanceRow))}
    for account in sorted(set(cached) | set(balances)):
        if cached.get(account, 0) != balances.get(account, 0):
            report.problems.append(
                f"balance of {account} is {cached.get(account, 0)}, entries say "
                f"{balances.get(account, 0)}"
            )
    for escrow in session.scalars(select(EscrowRow)):
        remaining = escrow.locked - escrow.released - escrow.refunded
        if remaining != balances.get(escrow_account(escrow.contract_id), 0):
            report.problems.append(f"escrow {escrow.contract_id}: remaining differs from entries")
