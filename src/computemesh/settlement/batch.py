"""Packing final settlements into ``settle_batch`` calls (pure functions, no chain).

The contract numbers each payer's jobs 0, 1, 2, ... and settles a range of them per call.
Each job in the range is one 48-bit entry, five per 256-bit word, lowest first:

    bits 0-39   amount to pay (2**40 - 1: skip this job)
    bits 40-47  position, in the call's ``payees`` list, of the job's payee set

A job record read back from the contract (``job_state``) is
``settled << 64 | payee_set << 40 | remaining``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

AMOUNT_BITS = 40
SKIP = (1 << AMOUNT_BITS) - 1
MAX_JOB_AMOUNT = SKIP - 1
ENTRY_BITS = 48
ENTRIES_PER_WORD = 5
MAX_BATCH = 1280
MAX_BATCH_PAYEES = 256
MAX_GAP = 128
"""Jobs left out between two settled ones; past this a new call is cheaper than skipping."""


@dataclass(frozen=True)
class JobState:
    payee_set: int
    remaining: int
    settled: bool

    @classmethod
    def decode(cls, word: int) -> JobState:
        return cls(
            payee_set=(word >> AMOUNT_BITS) & 0xFFFFFF,
            remaining=word & SKIP,
            settled=bool(word >> 64),
        )


@dataclass(frozen=True)
class BatchItem:
    """One job to settle: its index, the amount to pay and its payee set."""

    index: int
    amount: int
    payee_set: int


@dataclass(frozen=True)
class BatchCall:
    """The arguments of one ``settle_batch`` call and the jobs it settles."""

    first: int
    count: int
    payees: list[int]
    entries: list[int]
    items: list[BatchItem]


def plan_batches(items: Sequence[BatchItem]) -> list[BatchCall]:
    """Calls that settle every item once, in index order.

    Consecutive indices share a call while the range stays within ``MAX_BATCH`` jobs, the
    call names at most ``MAX_BATCH_PAYEES`` payee sets and no gap exceeds ``MAX_GAP``.
    Raises ``ValueError`` for a repeated index or an amount out of range.
    """
    ordered = sorted(items, key=lambda item: item.index)
    calls: list[BatchCall] = []
    run: list[BatchItem] = []
    payees: set[int] = set()
    for item in ordered:
        if not 0 <= item.amount <= MAX_JOB_AMOUNT:
            raise ValueError(f"job {item.index}: amount {item.amount} out of range")
        if run and item.index == run[-1].index:
            raise ValueError(f"job {item.index} appears twice")
        if run and not _fits(run, payees, item):
            calls.append(_call(run))
            run, payees = [], set()
        run.append(item)
        payees.add(item.payee_set)
    if run:
        calls.append(_call(run))
    return calls


def _fits(run: list[BatchItem], payees: set[int], item: BatchItem) -> bool:
    return (
        item.index - run[0].index < MAX_BATCH
        and item.index - run[-1].index <= MAX_GAP
        and len(payees | {item.payee_set}) <= MAX_BATCH_PAYEES
    )


def _call(run: list[BatchItem]) -> BatchCall:
    first = run[0].index
    count = run[-1].index - first + 1
    payees = sorted({item.payee_set for item in run})
    position = {payee: i for i, payee in enumerate(payees)}
    slots = [SKIP] * count
    for item in run:
        slots[item.index - first] = item.amount | position[item.payee_set] << AMOUNT_BITS
    return BatchCall(first, count, payees, pack_entries(slots), list(run))


def pack_entries(slots: Sequence[int]) -> list[int]:
    """48-bit entries packed five to a word, lowest first."""
    words = []
    for start in range(0, len(slots), ENTRIES_PER_WORD):
        word = 0
        for offset, entry in enumerate(slots[start : start + ENTRIES_PER_WORD]):
            word |= entry << (ENTRY_BITS * offset)
        words.append(word)
    return words


def unpack_amounts(first: int, count: int, entries: Sequence[int]) -> dict[int, int]:
    """Job index -> amount paid, for the jobs a call settled (skipped jobs left out)."""
    paid = {}
    for k in range(count):
        word = entries[k // ENTRIES_PER_WORD]
        amount = (word >> (ENTRY_BITS * (k % ENTRIES_PER_WORD))) & SKIP
        if amount != SKIP:
            paid[first + k] = amount
    return paid
