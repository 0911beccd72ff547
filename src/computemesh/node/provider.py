"""The provider node: advertises, bids, signs contracts, runs allocations, signs results.

Handlers decode, call a plain function or the executor, and encode. Every allocation is
written to the store before its contract is countersigned, and its signed result is stored
before it is pushed to the consumer, so a consumer can always fetch it later.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from computemesh import __version__
from computemesh.actor import Actor, Inbound, Supervisor, behaviours
from computemesh.executor import ExecutionRequest, ExecutionResult, SandboxLimits
from computemesh.executor.base import Executor, run_to_completion
from computemesh.matching import max_charge, unmet_requirements
from computemesh.matching.price import underpriced_terms
from computemesh.models.errors import MeshError, SpecError, VerificationError
from computemesh.models.job import JobSpec
from computemesh.models.market import (
    Advertisement,
    Bid,
    BidRefusal,
    BidRequest,
    ContractTerms,
    Hardware,
    Heartbeat,
    JobResult,
    OutputFile,
    ResourceUsage,
    ResultStatus,
)
from computemesh.models.validation import parse_job_spec, parse_model
from computemesh.node.capacity import CapacityLedger
from computemesh.node.checkpoints import CheckpointPump, fetch_restore
from computemesh.node.faults import FaultInjector, parse_fault
from computemesh.node.latency import LatencyProber
from computemesh.node.log_stream import LogPump
from computemesh.node.runtimes import offered_runtimes, runtime_refusals
from computemesh.node.settings import NodeSettings
from computemesh.protocol import check_proposal, countersign, sign_result, spec_digest
from computemesh.settlement import Ledger
from computemesh.settlement.escrow_checks import require_escrow
from computemesh.store import AllocationRecord, AllocationRepository
from computemesh.verification.zk import ZkKeys, attach_proof, wants_proof

log = logging.getLogger(__name__)

CONSUMER_REQUEST_TIMEOUT_S = 10.0
"""How long a node waits for its consumer to answer (a checkpoint to restore)."""

NO_SANDBOX_REASON = (
    "this node has no sandbox (bubblewrap missing) and was not started with --insecure-no-sandbox"
)


def now_ms() -> int:
    return int(time.time() * 1000)


class ProviderNode:
    def __init__(
        self,
        *,
        actor: Actor,
        settings: NodeSettings,
        hardware: Hardware,
        allocations: AllocationRepository,
        executors: Mapping[str, Executor],
        settlement: Ledger | None = None,
    ) -> None:
        self.actor = actor
        self.settlement = settlement
        self.settings = settings
        self.hardware = hardware
        self.allocations = allocations
        self.executors = dict(executors)
        self.ledger = CapacityLedger.for_hardware(
            hardware, memory_fraction=settings.memory_fraction
        )
        self._runs: dict[str, asyncio.Task[None]] = {}
        self._cancelled: set[str] = set()
        """Contract ids whose consumer cancelled the run: it ends with a signed result."""
        self._heartbeat_seq = 0
        self.faults = FaultInjector(parse_fault(settings.fault)) if settings.fault else None
        """Deliberate misbehaviour (``--fault``, tests only); None on an honest node."""
        self.latency = LatencyProber(
            actor=actor,
            settings=settings.probe_settings(),
            on_new_region=self.publish_advertisement,
        )
        """Round trips to peers, advertised per region (``node.latency``)."""
        for behavior, handler in (
            (behaviours.BID_REQUEST, self.on_bid_request),
            (behaviours.DISCOVER, self.on_discover),
            (behaviours.ADVERTISEMENT, self.latency.on_advertisement),
            (behaviours.PING, self.latency.on_ping),
            (behaviours.COMMIT, self.on_commit),
            (behaviours.RESULT_FETCH, self.on_result_fetch),
            (behaviours.CANCEL, self.on_cancel),
        ):
            actor.register(behavior, handler)

    @property
    def did(self) -> str:
        return self.actor.did

    # Lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        await self.reconcile_interrupted()
        await self.actor.start()
        await self.actor.join(behaviours.TOPIC_BID_REQUESTS)
        await self.actor.join(behaviours.TOPIC_DISCOVER)
        await self.actor.join(behaviours.TOPIC_ADVERTISEMENTS)
        await self.publish_advertisement()
        await self.actor.broadcast(behaviours.TOPIC_DISCOVER, behaviours.DISCOVER, {})
        log.info("node %s up: %s", self.did, self.hardware.model_dump())

    async def run(self, supervisor: Supervisor) -> None:
        """Start, then keep the heartbeat and advertisement loops alive under ``supervisor``."""
        await self.start()
        supervisor.spawn("heartbeat", self._heartbeat_loop)
        supervisor.spawn("advertise", self._advertise_loop)
        supervisor.spawn("latency", self.latency.run)

    async def stop(self) -> None:
        for task in list(self._runs.values()):
            task.cancel()
        await asyncio.gather(*self._runs.values(), return_exceptions=True)
        await self.actor.stop()

    async def wait_idle(self) -> None:
        await asyncio.gather(*self._runs.values(), return_exceptions=True)

    # Advertising --------------------------------------------------------------------------

    def advertisement(self) -> Advertisement:
        return Advertisement(
            hardware=self.hardware,
            region=self.settings.region,
            executors=sorted(self.executors),
            **self.settings.rates().model_dump(),
            sandboxed=self.settings.sandbox and bool(self.executors),
            free=self.ledger.free(),
            version=__version__,
            runtimes=offered_runtimes(self.executors),
            network=self.settings.allow_network,
            latency_ms=self.latency.latency_ms(),
        )

    async def publish_advertisement(self) -> None:
        await self.actor.broadcast(
            behaviours.TOPIC_ADVERTISEMENTS,
            behaviours.ADVERTISEMENT,
            self.advertisement().model_dump(mode="json"),
        )

    async def _advertise_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.advertise_interval_s)
            await self.publish_advertisement()

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval_s)
            self._heartbeat_seq += 1
            beat = Heartbeat(
                seq=self._heartbeat_seq, free=self.ledger.free(), running=self.ledger.running
            )
            await self.actor.broadcast(
                behaviours.TOPIC_HEARTBEATS, behaviours.HEARTBEAT, beat.model_dump(mode="json")
            )

    async def on_discover(self, inbound: Inbound) -> None:
        await self.actor.send(
            inbound.sender,
            behaviours.ADVERTISEMENT,
            self.advertisement().model_dump(mode="json"),
        )

    # Bidding ------------------------------------------------------------------------------

    def refusal_reasons(self, spec: JobSpec) -> list[str]:
        if not self.executors:
            return [NO_SANDBOX_REASON]
        return [
            *unmet_requirements(spec, self.advertisement(), self.did),
            *runtime_refusals(spec, self.executors),
        ]

    async def on_bid_request(self, inbound: Inbound) -> None:
        request = parse_model(BidRequest, inbound.payload, what="bid request")
        if self.did in request.asked:
            return  # the broadcast copy of a request this node also received directly
        reasons = self.refusal_reasons(request.spec)
        if reasons:
            refusal = BidRefusal(
                request_id=request.request_id, job_id=request.job_id, reasons=reasons
            )
            await self.actor.send(
                inbound.sender, behaviours.BID_REFUSAL, refusal.model_dump(mode="json")
            )
            return
        rates = self.settings.rates()
        bid = Bid(
            **rates.model_dump(),
            request_id=request.request_id,
            job_id=request.job_id,
            max_charge=max_charge(request.spec, rates),
            advertisement=self.advertisement(),
        )
        await self.actor.send(inbound.sender, behaviours.BID, bid.model_dump(mode="json"))

    # Contracts ----------------------------------------------------------------------------

    async def on_commit(self, inbound: Inbound) -> dict[str, Any]:
        """Check a signed proposal (and its escrow, with a ledger), reserve capacity, store,
        countersign, start the run."""
        terms = check_proposal(
            inbound.payload.get("proposal"), sender=inbound.sender, provider=self.did
        )
        existing = self.allocations.get(terms.contract_id)
        if existing is not None:
            return {"contract": existing.contract}
        spec = self._spec_for(terms, inbound.payload.get("spec"))
        reasons = self.refusal_reasons(spec)
        if reasons:
            raise MeshError("; ".join(reasons), code="cannot_run", retryable=True)
        underpriced = underpriced_terms(terms, spec, self.settings.rates())
        if underpriced:
            raise MeshError("; ".join(underpriced), code="price_too_low")
        if self.settlement is not None:
            require_escrow(self.settlement, terms)
        if not self.ledger.reserve(terms.contract_id, spec.resources):
            raise MeshError("capacity was taken meanwhile", code="no_capacity", retryable=True)
        contract = countersign(self.actor.identity, inbound.payload["proposal"])
        self.allocations.accept(
            contract_id=terms.contract_id,
            job_id=terms.job_id,
            consumer=terms.consumer,
            spec=spec.model_dump(mode="json"),
            contract=contract,
        )
        self._runs[terms.contract_id] = asyncio.create_task(self._run_allocation(terms, spec))
        log.info("accepted contract %s for job %s", terms.contract_id, terms.job_id)
        return {"contract": contract}

    @staticmethod
    def _spec_for(terms: ContractTerms, data: object) -> JobSpec:
        spec = parse_job_spec(data)
        if spec_digest(spec) != terms.spec_sha256:
            raise VerificationError("the spec sent is not the spec the contract names")
        if not spec.is_resolved():
            raise SpecError("every input must be inline and carry its sha256")
        return spec

    # Running ------------------------------------------------------------------------------

    async def _run_allocation(self, terms: ContractTerms, spec: JobSpec) -> None:
        executor = self.executors[spec.executor]
        self.allocations.set_status(terms.contract_id, "running")
        try:
            fetch = self._consumer_request(terms, behaviours.CHECKPOINT_FETCH)
            restore = await fetch_restore(terms, self._contract_record(terms), fetch)
            logs, checkpoints = self._watchers(terms, spec, executor)
            outcome = await run_to_completion(
                executor,
                self._execution_request(terms, spec, restore),
                self.settings.work_root,
                [logs, *([checkpoints] if checkpoints else [])],
            )
            pushed = checkpoints.bytes_out if checkpoints else 0
            result = self._job_result(terms, outcome, checkpoint_bytes=pushed)
            if wants_proof(spec):
                result = await self._with_proof(spec, result)
        except MeshError as exc:
            result = self._failure(terms, f"{exc.code}: {exc.message}")
        except Exception as exc:
            log.exception("allocation %s failed to run", terms.contract_id)
            result = self._failure(terms, f"internal error: {exc}")
        except asyncio.CancelledError:
            if terms.contract_id not in self._cancelled:
                raise  # the node is stopping: the allocation is reconciled at restart
            _absorb_cancellation()
            result = self._failure(terms, CANCELLED_REASON, status="killed")
        finally:
            self.ledger.release(terms.contract_id)
        if self.faults is not None:
            result = await self.faults.tamper(result)
        await self._deliver(terms, result)
        self._runs.pop(terms.contract_id, None)
        self._cancelled.discard(terms.contract_id)

    def _watchers(
        self, terms: ContractTerms, spec: JobSpec, executor: Executor
    ) -> tuple[LogPump, CheckpointPump | None]:
        """What watches a run: its live output, and its checkpoints when it declares them."""
        logs = LogPump(terms=terms, push=self._consumer_push(terms, behaviours.LOG))
        if spec.checkpoint is None:
            return logs, None
        checkpoints = CheckpointPump(
            executor=executor,
            terms=terms,
            identity=self.actor.identity,
            interval_s=spec.checkpoint.interval_s,
            push=self._consumer_push(terms, behaviours.CHECKPOINT),
        )
        return logs, checkpoints

    def _contract_record(self, terms: ContractTerms) -> dict[str, Any]:
        record = self.allocations.get(terms.contract_id)
        assert record is not None, "an allocation is stored before it runs"
        return record.contract

    def _consumer_push(
        self, terms: ContractTerms, behavior: str
    ) -> Callable[[dict[str, Any]], Awaitable[None]]:
        async def push(payload: dict[str, Any]) -> None:
            await self.actor.send(terms.consumer, behavior, payload)

        return push

    def _consumer_request(
        self, terms: ContractTerms, behavior: str
    ) -> Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]:
        async def ask(payload: dict[str, Any]) -> dict[str, Any]:
            timeout = CONSUMER_REQUEST_TIMEOUT_S
            return await self.actor.request(terms.consumer, behavior, payload, timeout=timeout)

        return ask

    def _execution_request(
        self, terms: ContractTerms, spec: JobSpec, restore: bytes | None = None
    ) -> ExecutionRequest:
        inputs = [(item.path, item.inline_bytes() or b"", item.executable) for item in spec.inputs]
        limits = SandboxLimits(
            wall_time_s=spec.timeout_s,
            cpu_time_s=spec.cpu_time_limit_s(),
            memory_mb=spec.resources.memory_mb,
            max_processes=self.settings.max_processes,
            max_file_mb=spec.resources.disk_mb,
            max_output_bytes=self.settings.max_output_bytes,
            cpu_cores=spec.resources.cpu,
        )
        return ExecutionRequest(
            job_id=terms.job_id,
            command=list(spec.command),
            env=dict(spec.env),
            inputs=inputs,
            outputs=list(spec.outputs),
            limits=limits,
            fuel=spec.fuel,
            checkpointing=spec.checkpoint is not None,
            restore=restore,
            image=spec.image,
            network=spec.network,
            runtime=spec.runtime,
            stdin=spec.stdin,
        )

    def _job_result(
        self, terms: ContractTerms, outcome: ExecutionResult, *, checkpoint_bytes: int = 0
    ) -> JobResult:
        outputs = [
            OutputFile(
                path=item.path,
                sha256=item.sha256,
                size=item.size,
                content_b64=None if item.data is None else _b64(item.data),
            )
            for item in outcome.outputs
        ]
        return JobResult(
            contract_id=terms.contract_id,
            job_id=terms.job_id,
            provider=self.did,
            status=outcome.status,
            reason=outcome.reason[:2048],
            exit_code=outcome.exit_code,
            stdout=outcome.stdout.decode("utf-8", errors="replace"),
            stderr=outcome.stderr.decode("utf-8", errors="replace"),
            stdout_truncated=outcome.stdout_truncated,
            stderr_truncated=outcome.stderr_truncated,
            outputs=outputs,
            usage=outcome.usage.model_copy(
                update={"bytes_out": outcome.usage.bytes_out + checkpoint_bytes}
            ),
            finished_at_ms=now_ms(),
        )

    async def _with_proof(self, spec: JobSpec, result: JobResult) -> JobResult:
        """A completed zk job's result with the proof of its inference (``verification.zk``,
        keys cached under ``<home>/cache/zk``). A proof that cannot be made is left out and
        its reason logged: the consumer then accepts the result from no one."""
        if result.status != "completed":
            return result
        keys = ZkKeys(self.settings.home / "cache" / "zk")
        try:
            return await asyncio.to_thread(attach_proof, keys, spec, result)
        except MeshError as exc:
            log.warning("no zk proof for job %s: %s", result.job_id, exc.message)
            return result.model_copy(update={"reason": f"no zk proof: {exc.message}"[:2048]})

    def _failure(
        self, terms: ContractTerms, reason: str, *, status: ResultStatus = "failed"
    ) -> JobResult:
        return JobResult(
            contract_id=terms.contract_id,
            job_id=terms.job_id,
            provider=self.did,
            status=status,
            reason=reason[:2048],
            exit_code=None,
            stdout="",
            stderr="",
            usage=ResourceUsage(wall_s=0.0, cpu_s=0.0, max_rss_kb=0),
            finished_at_ms=now_ms(),
        )

    async def _deliver(self, terms: ContractTerms, result: JobResult) -> None:
        signed = sign_result(self.actor.identity, result)
        self.allocations.finish(terms.contract_id, signed)
        log.info(
            "allocation %s %s (%s) in %.2fs",
            terms.contract_id,
            result.status,
            result.reason or f"exit {result.exit_code}",
            result.usage.wall_s,
        )
        try:
            await self.actor.send(terms.consumer, behaviours.RESULT, {"result": signed})
        except MeshError as exc:
            log.warning("could not push result %s: %s; it stays fetchable", terms.job_id, exc)

    async def reconcile_interrupted(self) -> None:
        """Allocations a previous run of this node left unfinished end as signed failures."""
        for record in self.allocations.unfinished():
            terms = parse_model(ContractTerms, record.contract["terms"], what="contract terms")
            signed = sign_result(self.actor.identity, self._failure(terms, INTERRUPTED_REASON))
            self.allocations.finish(record.contract_id, signed)
            log.warning("allocation %s was interrupted by a restart", record.contract_id)

    # Fetching -----------------------------------------------------------------------------

    async def on_result_fetch(self, inbound: Inbound) -> dict[str, Any]:
        contract_id = inbound.payload.get("contract_id")
        record = self.allocations.get(contract_id) if isinstance(contract_id, str) else None
        if record is None or record.consumer != inbound.sender:
            raise MeshError("no such allocation for you here", code="unknown_allocation")
        return _fetch_reply(record)

    async def on_cancel(self, inbound: Inbound) -> dict[str, Any]:
        """Stop an allocation at its consumer's request; reply its state as a fetch does.

        The run is stopped (the executor kills it, capacity is freed) and ends with a
        signed ``killed`` result, pushed as any result. Cancelling an allocation that
        already finished changes nothing and answers its result.
        """
        contract_id = inbound.payload.get("contract_id")
        record = self.allocations.get(contract_id) if isinstance(contract_id, str) else None
        if record is None or record.consumer != inbound.sender:
            raise MeshError("no such allocation for you here", code="unknown_allocation")
        run = self._runs.get(record.contract_id)
        if run is not None and record.status != "finished":
            if record.contract_id not in self._cancelled:
                self._cancelled.add(record.contract_id)
                run.cancel()
                log.info("allocation %s cancelled by its consumer", record.contract_id)
            await asyncio.wait({run}, timeout=CANCEL_WAIT_S)
        return _fetch_reply(self.allocations.get(record.contract_id) or record)


INTERRUPTED_REASON = "interrupted: the node restarted during the run"
"""The reason signed into the result of an allocation a restart cut short; consumers
recognise its ``interrupted:`` prefix and place the job elsewhere (orchestrator.recovery)."""


CANCELLED_REASON = "cancelled by the consumer"

CANCEL_WAIT_S = 3.0
"""How long a cancel waits for the stopped run to sign its result before replying."""


def _absorb_cancellation() -> None:
    """Let the current task go on after the cancellation it caught (a cancelled run still
    signs and delivers its result)."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


def _fetch_reply(record: AllocationRecord) -> dict[str, Any]:
    return {"status": record.status, "result": record.result}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
