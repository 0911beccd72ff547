"""Cardano payments: transactions built and signed offline with pycardano, submitted through
a configured Ogmios or Blockfrost endpoint.

**What a payment is.** One transaction pays the shares of one or more settled jobs (a
release's provider, treasury and model creator shares) to the payees' Cardano addresses,
one output per payee, 1 ledger unit = 1 lovelace (credits are denominated in ada on this
backend). The change goes back to the payer. Outputs below the ledger's minimum UTxO
(about 1 ada) are refused (``below_min_utxo``): small earnings are paid in aggregate.

**Metadata.** Under label ``METADATA_LABEL`` (``1967``, computemesh's own; not registered in
the CIP-10 label registry), the transaction carries::

    {"v": 1, "jobs": [{"contract": <32 hex>, "job": <32 hex>, "amount": <units>,
                       "paid": [[<output index>, <lovelace>], ...]}, ...]}

so anyone reading the chain finds which job each output pays. Every string fits the
64-byte limit of Cardano metadata.

**Keys.** ``payment_key_from_identity`` derives the payer's Cardano key from the DID's seed
(BLAKE2b keyed with a domain string, so the two keys are unrelated and neither signature
can stand for the other); ``PaymentSigningKey.load`` reads a ``cardano-cli`` key file.

**Offline building.** pycardano's ``TransactionBuilder`` needs a ``ChainContext``:
``OfflineChainContext`` holds fixed protocol parameters (``OFFLINE_PROTOCOL`` are
mainnet's fee and min-UTxO parameters; pass the live ones when they change) and the UTxOs
you give it, and never touches a network.

**Submission.** ``CardanoSubmitter`` posts the signed CBOR: to Blockfrost's
``POST {url}/tx/submit`` (``Content-Type: application/cbor``, header ``project_id``), or as
Ogmios v6 JSON-RPC ``submitTransaction`` over HTTP. No Cardano node or service is reachable
from the machines this was built on; the tests check the request shape against a loopback
HTTP server, and nothing here has been run against a live network.
"""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal

from pycardano import (  # type: ignore[import-untyped]
    Address,
    AlonzoMetadata,
    AuxiliaryData,
    GenesisParameters,
    Metadata,
    Network,
    PaymentSigningKey,
    PaymentVerificationKey,
    ProtocolParameters,
    Transaction,
    TransactionBuilder,
    TransactionOutput,
    UTxO,
)
from pycardano.backend.base import ChainContext  # type: ignore[import-untyped]
from pycardano.exception import PyCardanoException  # type: ignore[import-untyped]
from pycardano.utils import min_lovelace_post_alonzo  # type: ignore[import-untyped]

from computemesh.identity import Identity
from computemesh.settlement.errors import ChainError, SettlementError
from computemesh.settlement.records import check_contract_id

METADATA_LABEL = 1967
METADATA_VERSION = 1
KEY_DOMAIN = b"computemesh/cardano/payment/v1"

CardanoNetwork = Literal["mainnet", "preprod", "preview"]
EndpointKind = Literal["ogmios", "blockfrost"]

NETWORK_IDS: dict[str, Network] = {
    "mainnet": Network.MAINNET,
    "preprod": Network.TESTNET,
    "preview": Network.TESTNET,
}


@dataclass(frozen=True)
class CardanoSettings:
    """Which network, and which endpoint submits: Ogmios (``url`` of its HTTP port) or
    Blockfrost (``url`` such as ``https://cardano-preprod.blockfrost.io/api/v0`` and the
    ``project_id`` it issued)."""

    network: CardanoNetwork = "preprod"
    endpoint: EndpointKind | None = None
    url: str | None = None
    project_id: str | None = field(default=None, repr=False)
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.network not in NETWORK_IDS:
            raise SettlementError(f"unknown Cardano network {self.network!r}", code="bad_chain")
        if self.endpoint not in (None, "ogmios", "blockfrost"):
            raise SettlementError(
                f"unknown endpoint kind {self.endpoint!r}: ogmios or blockfrost", code="bad_chain"
            )
        if self.endpoint is not None and not (self.url or "").startswith(("http://", "https://")):
            raise SettlementError(f"{self.endpoint} needs an http(s) url", code="bad_chain")
        if self.endpoint == "blockfrost" and not self.project_id:
            raise SettlementError("blockfrost needs a project id", code="bad_chain")

    @property
    def network_id(self) -> Network:
        return NETWORK_IDS[self.network]


@dataclass(frozen=True)
class JobPayment:
    """One settled job's payouts: lovelace per payee address (a release's shares)."""

    contract_id: str
    job_id: str
    payouts: Mapping[str, int]

    def __post_init__(self) -> None:
        check_contract_id(self.contract_id)
        check_contract_id(self.job_id)
        if not self.payouts or any(
            not isinstance(v, int) or isinstance(v, bool) or v <= 0 for v in self.payouts.values()
        ):
            raise SettlementError("a payment pays positive lovelace to someone", code="bad_amount")

    @property
    def amount(self) -> int:
        return sum(self.payouts.values())


OFFLINE_PROTOCOL = ProtocolParameters(
    min_fee_constant=155_381,
    min_fee_coefficient=44,
    max_block_size=90_112,
    max_tx_size=16_384,
    max_block_header_size=1_100,
    key_deposit=2_000_000,
    pool_deposit=500_000_000,
    pool_influence=Fraction(3, 10),
    monetary_expansion=Fraction(3, 1000),
    treasury_expansion=Fraction(1, 5),
    decentralization_param=Fraction(0),
    extra_entropy="",
    protocol_major_version=9,
    protocol_minor_version=0,
    min_utxo=0,
    min_pool_cost=170_000_000,
    price_mem=Fraction(577, 10_000),
    price_step=Fraction(721, 10_000_000),
    max_tx_ex_mem=14_000_000,
    max_tx_ex_steps=10_000_000_000,
    max_block_ex_mem=62_000_000,
    max_block_ex_steps=20_000_000_000,
    max_val_size=5_000,
    collateral_percent=150,
    max_collateral_inputs=3,
    coins_per_utxo_word=4_310 * 8,
    coins_per_utxo_byte=4_310,
    cost_models={},
)
"""Mainnet's fee (44 lovelace per byte + 155,381) and min-UTxO (4,310 per byte) parameters."""

OFFLINE_GENESIS = GenesisParameters(
    active_slots_coefficient=Fraction(1, 20),
    update_quorum=5,
    max_lovelace_supply=45_000_000_000_000_000,
    network_magic=1,
    epoch_length=432_000,
    system_start=1_654_041_600,
    slots_per_kes_period=129_600,
    slot_length=1,
    max_kes_evolutions=62,
    security_param=2_160,
)


class OfflineChainContext(ChainContext):  # type: ignore[misc]
    """A ``ChainContext`` that knows only what it is given: fixed protocol parameters, the
    UTxOs of each address, and a slot. Building with it needs no network; ``submit_tx`` is
    not offered (use ``CardanoSubmitter``)."""

    def __init__(
        self,
        *,
        network: Network,
        utxos: Mapping[str, Sequence[UTxO]],
        slot: int = 0,
        protocol: ProtocolParameters = OFFLINE_PROTOCOL,
    ) -> None:
        self._network = network
        self._by_address = {address: list(items) for address, items in utxos.items()}
        self._slot = slot
        self._protocol = protocol

    @property
    def protocol_param(self) -> ProtocolParameters:
        return self._protocol

    @property
    def genesis_param(self) -> GenesisParameters:
        return OFFLINE_GENESIS

    @property
    def network(self) -> Network:
        return self._network

    @property
    def epoch(self) -> int:
        return self._slot // int(OFFLINE_GENESIS.epoch_length)

    @property
    def last_block_slot(self) -> int:
        return self._slot

    def _utxos(self, address: str) -> list[UTxO]:
        return list(self._by_address.get(address, []))


def payment_key_from_identity(identity: Identity) -> PaymentSigningKey:
    """The Cardano payment key derived from a DID's seed (see the module doc)."""
    seed = hashlib.blake2b(identity.seed, key=KEY_DOMAIN, digest_size=32).digest()
    return PaymentSigningKey(seed)


def payer_address(key: PaymentSigningKey, network: Network) -> Address:
    """The enterprise address (payment key only, no stake part) of ``key``."""
    verification = PaymentVerificationKey.from_signing_key(key)
    return Address(payment_part=verification.hash(), network=network)


def payment_metadata(payments: Sequence[JobPayment], outputs: Sequence[str]) -> dict[str, Any]:
    """The label's value: each job with its amount and the outputs it pays."""
    index = {address: position for position, address in enumerate(outputs)}
    jobs = [
        {
            "contract": payment.contract_id,
            "job": payment.job_id,
            "amount": payment.amount,
            "paid": [[index[address], lovelace] for address, lovelace in payment.payouts.items()],
        }
        for payment in payments
    ]
    return {"v": METADATA_VERSION, "jobs": jobs}


def build_payment(
    payments: Sequence[JobPayment],
    *,
    key: PaymentSigningKey,
    context: ChainContext,
    ttl: int | None = None,
) -> Transaction:
    """A signed transaction paying ``payments`` from ``key``'s address (change back to it).

    Raises ``SettlementError``: ``bad_address`` for a payee that is not an address of the
    context's network, ``below_min_utxo`` for an output under the minimum UTxO,
    ``insufficient_funds`` when the payer's UTxOs cannot cover outputs and fee.
    """
    if not payments:
        raise SettlementError("nothing to pay", code="bad_amount")
    totals = _totals_per_payee(payments)
    payer = payer_address(key, context.network)
    builder = TransactionBuilder(context)
    builder.add_input_address(payer)
    for address, lovelace in totals.items():
        output = TransactionOutput(_address(address, context.network), lovelace)
        _check_min_utxo(output, context)
        builder.add_output(output)
    metadata = Metadata({METADATA_LABEL: payment_metadata(payments, list(totals))})
    builder.auxiliary_data = AuxiliaryData(AlonzoMetadata(metadata=metadata))
    if ttl is not None:
        builder.ttl = ttl
    try:
        return builder.build_and_sign([key], change_address=payer)
    except PyCardanoException as exc:
        raise SettlementError(
            f"cannot build the payment from {payer}: {exc}", code="insufficient_funds"
        ) from exc


def read_payment_metadata(tx: Transaction) -> dict[str, Any] | None:
    """The computemesh metadata of a transaction, None when it carries none."""
    auxiliary = tx.auxiliary_data
    data = auxiliary.data if auxiliary is not None else None
    metadata = data.metadata if isinstance(data, AlonzoMetadata) else data
    if not isinstance(metadata, Metadata) or METADATA_LABEL not in metadata:
        return None
    value = metadata[METADATA_LABEL]
    return value if isinstance(value, dict) else None


def read_transaction(cbor_hex: str) -> Transaction:
    """A transaction from its CBOR hex; ``SettlementError`` (``bad_tx``) for anything else."""
    try:
        return Transaction.from_cbor(cbor_hex.strip())
    except Exception as exc:  # pycardano raises many kinds on malformed CBOR
        raise SettlementError(f"not a Cardano transaction: {exc}", code="bad_tx") from exc


def _totals_per_payee(payments: Sequence[JobPayment]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for payment in payments:
        for address, lovelace in payment.payouts.items():
            totals[address] = totals.get(address, 0) + lovelace
    return totals


def _address(text: str, network: Network) -> Address:
    try:
        address = Address.from_primitive(text)
    except (PyCardanoException, ValueError, TypeError) as exc:
        raise SettlementError(f"not a Cardano address: {text!r}", code="bad_address") from exc
    if address.network != network:
        raise SettlementError(f"{text} is not an address of {network.name}", code="bad_address")
    return address


def _check_min_utxo(output: TransactionOutput, context: ChainContext) -> None:
    needed = min_lovelace_post_alonzo(output, context)
    if output.amount.coin < needed:
        raise SettlementError(
            f"{output.amount.coin} lovelace to {output.address} is under the minimum UTxO"
            f" of {needed}",
            code="below_min_utxo",
            hint="pay small earnings in aggregate, once they exceed the minimum",
        )


class CardanoSubmitter:
    """Sends signed transactions to the endpoint ``settings`` name; returns the tx id."""

    def __init__(self, settings: CardanoSettings) -> None:
        if settings.endpoint is None or settings.url is None:
            raise SettlementError("no Cardano endpoint is configured", code="no_endpoint")
        self.settings = settings

    def submit(self, tx: Transaction) -> str:
        """Submit; ``ChainError`` when the endpoint refuses (``retryable`` when unreachable)."""
        cbor = tx.to_cbor()
        if self.settings.endpoint == "blockfrost":
            answer = self._post("/tx/submit", cbor, self._blockfrost_headers())
            if not isinstance(answer, str):
                raise ChainError(f"blockfrost answered {answer!r}")
            return answer
        return self._submit_ogmios(cbor.hex())

    def _submit_ogmios(self, cbor_hex: str) -> str:
        request = {
            "jsonrpc": "2.0",
            "method": "submitTransaction",
            "params": {"transaction": {"cbor": cbor_hex}},
            "id": "computemesh-submit",
        }
        answer = self._post("", json.dumps(request).encode(), {"Content-Type": "application/json"})
        if isinstance(answer, dict) and "error" in answer:
            raise ChainError(f"ogmios refused the transaction: {answer['error']}")
        try:
            return str(answer["result"]["transaction"]["id"])
        except (KeyError, TypeError) as exc:
            raise ChainError(f"ogmios answered {answer!r}") from exc

    def _blockfrost_headers(self) -> dict[str, str]:
        return {"Content-Type": "application/cbor", "project_id": self.settings.project_id or ""}

    def _post(self, path: str, body: bytes, headers: dict[str, str]) -> Any:
        url = (self.settings.url or "").rstrip("/") + path
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.settings.timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:500].decode("utf-8", errors="replace")
            raise ChainError(f"{self.settings.endpoint} refused ({exc.code}): {detail}") from exc
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise ChainError(
                f"{self.settings.endpoint} at {url} unreachable: {exc}", retryable=True
            ) from exc
        except json.JSONDecodeError as exc:
            raise ChainError(f"{self.settings.endpoint} answered something not JSON") from exc
