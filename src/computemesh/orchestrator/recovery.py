"""Crash recovery on the consumer side: resume unfinished jobs, move interrupted ones.

An orchestrator killed at any moment leaves its jobs in the store. ``Recovery.recover``,
run when a consumer session starts, takes each one up where it stopped:

- ``pending`` / ``bidding`` / ``queued``: placed again (a contract the dead process signed but never
  stored names a contract id this job does not hold, so its result is never accepted);
- ``running``: results fetched from the providers (read-only, by contract id), then awaited;
  results are keyed by contract id, so none is accepted twice.

Then it settles the escrows the dead process left open on jobs now final
(``settle_leftover_escrows``), so that none stays locked and none is paid twice.

An allocation whose provider lost it is placed elsewhere (``relocate``), without that
provider and without the job's other providers, at most ``max_relocations`` lost contracts
per job (counted from the job's stored history, so a restart does not reset the count):

- the provider was declared dead by the failure detector (``on_node_dead``, wired to the
  mesh view: no heartbeat for ``dead_after_s``) and does not answer a ping within
  ``confirm_dead_s`` (a late heartbeat alone moves nothing): every running job holding a
  contract of that provider without its result moves;
- the provider restarted: its signed result is a failure whose reason starts with
  ``interrupted:`` (``node.provider.INTERRUPTED_REASON``), which is not accepted as the
  job's outcome;
- the provider is gone: nothing on the bus answers for it (``no_responders``) for
  ``unreachable_after_s``.

A move supersedes the lost contract and refunds its escrow when payments are configured,
unless the job holds a checkpoint of that contract: then the escrow stays locked until the
job is final and pays the checkpoint's signed usage if a verified result built on it
(``orchestrator.progress``), else is refunded, so the provider is paid for verified
progress only. It asks the old provider to cancel the allocation in case it still runs
(best effort, in the background), records a ``relocated`` event in the job's history, and
places the job again: a job with a verified checkpoint resumes from its latest one (every
placement names it in ``resume_from``), any other restarts from the beginning.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from computemesh.actor.behaviours import PING
from computemesh.identity.did import abbreviate_did
from computemesh.models.errors import MeshError, NoProviderError
from computemesh.models.market import ContractTerms
from computemesh.models.validation import parse_job_spec
from computemesh.orchestrator.outcome import stored_outcome
from computemesh.orchestrator.progress import verified_progress
from computemesh.protocol import verify_result
from computemesh.settlement import SettlementError
from computemesh.store import JobRecord, UnknownJob

if TYPE_CHECKING:
    from computemesh.orchestrator.orchestrator import Orchestrator
    from computemesh.orchestrator.payments import Payments

log = logging.getLogger(__name__)

INTERRUPTED_PREFIX = "interrupted:"
PLACE_AGAIN = ("pending", "bidding", "queued")
AWAIT_AGAIN = ("running",)


@dataclass(frozen=True)
class RecoverySettings:
    max_relocations: int = 3
    unreachable_after_s: float = 10.0
    concurrency: int = 8
    outcome_grace_s: float = 30.0
    confirm_dead_s: float = 1.0


@dataclass
class RecoveryReport:
    """What one ``recover`` pass did, by job id."""

    placed: list[str] = field(default_factory=list)
    awaited: list[str] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)
    settled: list[str] = field(default_factory=list)
    """Contract ids of escrows left open by a killed session, settled by this pass."""


class Recovery:
    """Resumes one orchestrator's unfinished jobs and relocates interrupted allocations."""

    def __init__(self, orchestrator: Orchestrator, settings: RecoverySettings | None = None):
        self.orchestrator = orchestrator
        self.settings = settings or RecoverySettings()
        self._unreachable_since: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._task: asyncio.Task[RecoveryReport] | None = None
        self._moves: set[asyncio.Task[list[str]]] = set()
        self.on_relocated: list[Callable[[str, str], None]] = []
        """Callbacks called with ``(provider, executor)`` for each contract a relocation
        supersedes: the provider never answered for it (reputation counts a timeout)."""

    # Resuming -----------------------------------------------------------------------------

    def start(self) -> None:
        """Run ``recover`` in the background (see ``wait``); a second call does nothing."""
        if self._task is None:
            self._task = asyncio.create_task(self.recover(), name="recovery")

    async def wait(self) -> RecoveryReport:
        """The report of the background pass started by ``start``."""
        if self._task is None:
            raise RuntimeError("recovery was not started")
        return await self._task

    async def stop(self) -> None:
        tasks = [*self._moves, *([self._task] if self._task is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def recover(self) -> RecoveryReport:
        """Take up every unfinished job in the store; returns once each is final or given up."""
        jobs = self.orchestrator.jobs
        report = RecoveryReport()
        placing = jobs.in_states(PLACE_AGAIN)
        awaiting = jobs.in_states(AWAIT_AGAIN)
        if placing or awaiting:
            log.info("recovering %d job(s) to place, %d running", len(placing), len(awaiting))
        gate = asyncio.Semaphore(self.settings.concurrency)
        await asyncio.gather(
            *(self._bounded(gate, self._place_again(job, report)) for job in placing),
            *(self._bounded(gate, self._await_again(job, report)) for job in awaiting),
        )
        report.unfinished = [
            job.job_id for job in (*placing, *awaiting) if not jobs.get(job.job_id).is_final
        ]
        report.settled = self.settle_leftover_escrows()
        return report

    @staticmethod
    async def _bounded(gate: asyncio.Semaphore, work: Any) -> None:
        async with gate:
            await work

    async def _place_again(self, job: JobRecord, report: RecoveryReport) -> None:
        report.placed.append(job.job_id)
        try:
            placed = await self.orchestrator.place(job.job_id)
        except NoProviderError as exc:
            log.warning("recovered job %s found no provider: %s", job.job_id, exc.message)
            return
        if placed:
            await self.follow(job.job_id)

    async def _await_again(self, job: JobRecord, report: RecoveryReport) -> None:
        report.awaited.append(job.job_id)
        await self.orchestrator.fetch_results(job.job_id)
        await self.follow(job.job_id)

    async def follow(self, job_id: str) -> JobRecord:
        """Await a placed job's outcome, relocations included; returns it final or given up."""
        spec = parse_job_spec(self.orchestrator.jobs.get(job_id).spec)
        rounds = self.settings.max_relocations + 1
        record = self.orchestrator.jobs.get(job_id)
        for _ in range(rounds):
            timeout = spec.timeout_s + self.settings.outcome_grace_s
            record = await self.orchestrator.await_outcome(job_id, timeout=timeout)
            if record.is_final:
                break
        return record

    # Settling leftovers -------------------------------------------------------------------

    def settle_leftover_escrows(self) -> list[str]:
        """Close the escrows a killed session left open on jobs now final; their contract ids.

        A session killed between locking an escrow and storing its contract, between
        dropping a contract and refunding it, or between recording a job's outcome and
        settling it leaves an escrow nobody would close. Once its job is final, a contract
        the job holds settles as the stored outcome says (a release is keyed by result id,
        so it pays at most once), one it dropped is paid for its verified progress (keyed
        by checkpoint id) or refunded, and any other is refunded. Escrows of jobs not final are
        left alone: a session may still be placing them.
        """
        payments = self.orchestrator.payments
        if payments is None:
            return []
        settled = []
        for contract_id, job_id in payments.open_escrows().items():
            try:
                record = self.orchestrator.jobs.get(job_id)
            except UnknownJob:
                continue  # locked by another store's session of this identity
            if not record.is_final:
                continue
            try:
                closed = self._settle_leftover(payments, record, contract_id)
            except SettlementError as exc:
                log.error("contract %s: left open: %s", contract_id, exc.message)
                continue
            if closed:
                settled.append(contract_id)
        if settled:
            log.warning("settled %d escrow(s) a previous session left open", len(settled))
        return settled

    def _settle_if_ended(self, job_id: str) -> None:
        """A relocation that ended the job (given up, no provider) settles its escrows,
        the dropped contracts' included: nothing verified, so they are refunded."""
        record = self.orchestrator.jobs.get(job_id)
        if record.is_final and record.status != "completed":
            self.orchestrator.settle(job_id, stored_outcome(self.orchestrator.jobs, record))

    def _settle_leftover(self, payments: Payments, record: JobRecord, contract_id: str) -> bool:
        """Settle one open escrow of a final job as the stored outcome says: a contract it
        holds by its result, one it dropped by its verified progress, any other refunded."""
        outcome = stored_outcome(self.orchestrator.jobs, record)
        held = [c for c in record.contracts if c["terms"]["contract_id"] == contract_id]
        if held:
            return bool(payments.settle_outcome(held, outcome))
        superseded = self.orchestrator.jobs.superseded(record.job_id)
        dropped = [c for c in superseded if c["terms"]["contract_id"] == contract_id]
        if not dropped:
            return payments.refund(contract_id) is not None
        documents = self.orchestrator.checkpoints.document_by_digest(record.job_id)
        progress = verified_progress(outcome, record.contracts, superseded, documents)
        return bool(payments.settle_superseded(dropped, progress))

    # Relocating ---------------------------------------------------------------------------

    def on_node_dead(self, did: str) -> None:
        """Failure-detector callback: move the node's unfinished allocations, in the background."""
        task = asyncio.create_task(self.relocate_from(did), name=f"relocate:{did}")
        self._moves.add(task)
        task.add_done_callback(self._moves.discard)

    async def relocate_from(self, did: str) -> list[str]:
        """Relocate every running job holding a contract of ``did`` without its result;
        the ids of the jobs moved."""
        lost = [
            record.job_id
            for record in self.orchestrator.jobs.in_states(AWAIT_AGAIN)
            if _unfinished_on(record, did)
        ]
        if lost and await self._answers_ping(did):
            log.info("%s was silent but answers: nothing moved", abbreviate_did(did))
            return []
        if lost:
            log.warning("%s is dead: relocating %d job(s)", abbreviate_did(did), len(lost))
        reason = "declared dead: no heartbeat"
        moves = await asyncio.gather(
            *(self.relocate(job_id, {did}, reason=reason) for job_id in lost),
            return_exceptions=True,
        )
        for job_id, moved in zip(lost, moves, strict=True):
            if isinstance(moved, BaseException) and not isinstance(moved, Exception):
                raise moved
            if isinstance(moved, Exception):
                log.error("job %s could not be relocated: %s", job_id, moved)
        return lost

    async def _answers_ping(self, did: str) -> bool:
        payload = {"sent_ms": int(time.time() * 1000)}
        actor = self.orchestrator.actor
        try:
            await actor.request(did, PING, payload, timeout=self.settings.confirm_dead_s)
        except MeshError:
            return False
        return True

    async def on_fetched(self, job_id: str, terms: ContractTerms, document: object) -> bool:
        """A result fetched for ``terms``: True when recovery took it over (the caller must
        not accept it), because it reports the allocation interrupted."""
        self._unreachable_since.pop(terms.contract_id, None)
        if not self._is_interrupted(job_id, terms, document):
            return False
        log.warning(
            "job %s: %s lost its allocation; placing it elsewhere",
            job_id,
            abbreviate_did(terms.provider),
        )
        await self.relocate(job_id, {terms.provider}, reason="the provider lost the allocation")
        return True

    async def on_unreachable(self, job_id: str, terms: ContractTerms, error: MeshError) -> None:
        """A fetch from ``terms.provider`` failed; relocate once it has been gone long enough."""
        if error.code != "no_responders":
            return
        now = time.monotonic()
        since = self._unreachable_since.setdefault(terms.contract_id, now)
        if now - since < self.settings.unreachable_after_s:
            return
        log.warning(
            "job %s: %s unreachable for %.0f s; placing it elsewhere",
            job_id,
            abbreviate_did(terms.provider),
            now - since,
        )
        await self.relocate(job_id, {terms.provider}, reason="unreachable")

    async def relocate(
        self, job_id: str, exclude: Iterable[str], *, reason: str = "relocated"
    ) -> list[dict[str, Any]]:
        """Move ``job_id`` off the providers in ``exclude``: drop their contracts (and any
        result of theirs), refund their escrow, note each move in the job's history with
        ``reason``, and place the missing replicas on others, none of the job's own.

        Safe to call twice for one loss: the second call finds nothing to drop and nothing
        missing. Returns the new contracts; none when the job is final, nothing is missing,
        the job was relocated ``max_relocations`` times (it then ends ``failed``), or no
        provider takes it now (placement then queues it or ends it ``no_provider``).
        """
        excluded = set(exclude)
        async with self.job_lock(job_id):
            jobs = self.orchestrator.jobs
            for contract in jobs.get(job_id).contracts:
                terms = contract["terms"]
                if terms["provider"] in excluded:
                    if jobs.supersede_contract(job_id, terms["contract_id"]):
                        self._superseded(job_id, terms, reason)
                    self._unreachable_since.pop(terms["contract_id"], None)
            record = jobs.get(job_id)
            missing = self.orchestrator.missing_replicas(record)
            if record.is_final or missing <= 0:
                return []
            if relocations_of(record) > self.settings.max_relocations:
                jobs.set_status(job_id, "failed", "relocated too many times; giving up")
                self._settle_if_ended(job_id)
                return []
            held = {contract["terms"]["provider"] for contract in record.contracts}
            try:
                return await self.orchestrator.place(job_id, exclude=excluded | held, count=missing)
            except NoProviderError as exc:
                log.warning("job %s could not be relocated: %s", job_id, exc.message)
                return []
            finally:
                self._settle_if_ended(job_id)

    def job_lock(self, job_id: str) -> asyncio.Lock:
        """Held while a job's contracts are being replaced (relocation, migration)."""
        return self._locks.setdefault(job_id, asyncio.Lock())

    def _superseded(self, job_id: str, terms: dict[str, Any], reason: str) -> None:
        """Settle or hold a superseded contract's escrow, note the move in the job's
        history, and ask its provider to stop it in case it still runs (in the background:
        best effort).

        A contract with a stored checkpoint keeps its escrow until the job is final: the
        job resumes from that checkpoint and pays for it once a verified result built on
        it (``Orchestrator.settle``). Any other is refunded now."""
        contract_id = terms["contract_id"]
        held = self.orchestrator.checkpoints.holds_checkpoint_of(job_id, contract_id)
        self.orchestrator.cancel_later(terms, refund=not held)
        payments = self.orchestrator.payments
        refunded = False
        if payments is not None and not held:
            try:
                refunded = payments.refund(contract_id) is not None
            except SettlementError as exc:
                log.error("contract %s: refund failed: %s", contract_id, exc.message)
        self.orchestrator.jobs.record_event(
            job_id,
            "relocated",
            {
                "from": terms["provider"],
                "contract_id": contract_id,
                "reason": reason,
                "refunded": refunded,
                "escrow_held": held and payments is not None,
                "resume_from": self.orchestrator.checkpoints.latest_digest(job_id),
            },
        )
        executor = parse_job_spec(self.orchestrator.jobs.get(job_id).spec).executor
        for callback in self.on_relocated:
            callback(terms["provider"], executor)

    def _is_interrupted(self, job_id: str, terms: ContractTerms, document: object) -> bool:
        record = self.orchestrator.jobs.get(job_id)
        try:
            result = verify_result(document, terms=terms, spec=parse_job_spec(record.spec))
        except MeshError:
            return False  # not ours to judge: acceptance rejects it with its reason
        return result.status == "failed" and result.reason.startswith(INTERRUPTED_PREFIX)


def _unfinished_on(record: JobRecord, did: str) -> bool:
    """Whether the job holds a contract of ``did`` that has no result yet."""
    reported = {document["body"]["contract_id"] for document in record.results}
    return any(
        contract["terms"]["provider"] == did and contract["terms"]["contract_id"] not in reported
        for contract in record.contracts
    )


def relocations_of(record: JobRecord) -> int:
    """How many contracts the job has lost to relocation, from its stored history (so a
    restarted consumer keeps counting where the last one stopped)."""
    return sum(1 for entry in record.history if entry["event"] == "relocated")
