"""Deliberate misbehaviour, for testing verification against cheaters on a real mesh.

Off unless a node is started with ``--fault``. A faulty node changes its result *before*
signing it, so the signature is valid and only verification (comparison with other
providers) can catch it:

    wrong               every result wrong
    wrong:P             each result wrong with probability P (0 < P <= 1)
    collude:SECRET      every result wrong the same way as any partner holding SECRET
    late:S              every result delivered S seconds late (and correct)

A wrong result has each output's bytes replaced (sha256 and size follow, so the document is
self-consistent); with no outputs, its exit code is changed instead.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
import re
from dataclasses import dataclass
from typing import Literal

from computemesh.models.market import JobResult, OutputFile

FaultMode = Literal["wrong", "collude", "late"]
NUMBER = r"([0-9]+(?:\.[0-9]+)?)"
FAULT_PATTERN = re.compile(rf"^(wrong)(?::{NUMBER})?$|^(collude):(\S{{1,128}})$|^(late):{NUMBER}$")


@dataclass(frozen=True)
class Fault:
    mode: FaultMode
    probability: float = 1.0
    secret: str = ""
    delay_s: float = 0.0


def parse_fault(text: str) -> Fault:
    """A fault from its command-line form; ``ValueError`` says what is accepted."""
    found = FAULT_PATTERN.fullmatch(text)
    if found is None:
        raise ValueError(f"fault {text!r}: use wrong, wrong:P, collude:SECRET or late:S")
    wrong, probability, collude, secret, _, delay = found.groups()
    if wrong:
        chance = float(probability) if probability else 1.0
        if not 0.0 < chance <= 1.0:
            raise ValueError(f"fault {text!r}: the probability must be in (0, 1]")
        return Fault("wrong", probability=chance)
    if collude:
        return Fault("collude", secret=secret)
    seconds = float(delay)
    if not 0.0 <= seconds <= 3600.0:
        raise ValueError(f"fault {text!r}: the delay must be 0 to 3600 seconds")
    return Fault("late", delay_s=seconds)


class FaultInjector:
    """Applies one ``Fault`` to the results a node is about to sign."""

    def __init__(self, fault: Fault, *, rng: random.Random | None = None) -> None:
        self.fault = fault
        self.rng = rng or random.Random()

    async def tamper(self, result: JobResult) -> JobResult:
        """The result as this faulty node will sign it (after any delay)."""
        if self.fault.mode == "late":
            await asyncio.sleep(self.fault.delay_s)
            return result
        if self.fault.mode == "collude":
            return corrupt(result, salt=f"collude:{self.fault.secret}:{result.job_id}")
        if self.rng.random() < self.fault.probability:
            return corrupt(result, salt=f"wrong:{self.rng.random()}")
        return result


def corrupt(result: JobResult, *, salt: str) -> JobResult:
    """``result`` with wrong outputs derived from ``salt`` (same salt, same wrong answer)."""
    if not result.outputs:
        code = result.exit_code if result.exit_code is not None else 0
        return result.model_copy(update={"exit_code": code + 1})
    outputs = [_wrong_output(item, salt) for item in result.outputs]
    return result.model_copy(update={"outputs": outputs})


def _wrong_output(item: OutputFile, salt: str) -> OutputFile:
    data = hashlib.sha256(f"{salt}:{item.path}:{item.sha256}".encode()).hexdigest().encode()
    return OutputFile(
        path=item.path,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        content_b64=base64.b64encode(data).decode("ascii"),
    )
