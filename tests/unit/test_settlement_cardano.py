"""The Cardano backend: offline build, sign and decode; submission request shapes.

No Cardano node or service is reachable here: submission is checked against a loopback
HTTP server that records what it was sent and answers as Blockfrost or Ogmios would.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey
from pycardano import (
    Address,
    Network,
    PaymentSigningKey,
    Transaction,
    TransactionInput,
    TransactionOutput,
    UTxO,
)
from pycardano.utils import min_lovelace_post_alonzo

from computemesh.identity import Identity
from computemesh.settlement import ChainError, SettlementError
from computemesh.settlement.cardano import (
    OFFLINE_PROTOCOL,
    CardanoSettings,
    CardanoSubmitter,
    JobPayment,
    OfflineChainContext,
    build_payment,
    payer_address,
    payment_key_from_identity,
    read_payment_metadata,
)

NET = Network.TESTNET
CONTRACT, JOB = "a1" * 16, "b2" * 16


def address() -> str:
    return str(payer_address(PaymentSigningKey.generate(), NET))


@pytest.fixture
def payer() -> PaymentSigningKey:
    return payment_key_from_identity(Identity.generate())


def context_for(key: PaymentSigningKey, *lovelace: int) -> OfflineChainContext:
    own = payer_address(key, NET)
    utxos = [
        UTxO(TransactionInput.from_primitive([f"{i + 1:064x}", i]), TransactionOutput(own, amount))
        for i, amount in enumerate(lovelace)
    ]
    return OfflineChainContext(network=NET, utxos={str(own): utxos}, slot=10_000)


def test_payment_round_trips_with_metadata_and_a_valid_witness(payer: PaymentSigningKey) -> None:
    provider, treasury = address(), address()
    payment = JobPayment(CONTRACT, JOB, {provider: 4_000_000, treasury: 1_000_000})
    tx = build_payment([payment], key=payer, context=context_for(payer, 20_000_000), ttl=50_000)

    decoded = Transaction.from_cbor(tx.to_cbor())
    body = decoded.transaction_body
    metadata = read_payment_metadata(decoded)
    assert metadata == {
        "v": 1,
        "jobs": [
            {
                "contract": CONTRACT,
                "job": JOB,
                "amount": 5_000_000,
                "paid": [[0, 4_000_000], [1, 1_000_000]],
            }
        ],
    }
    assert decoded.auxiliary_data is not None
    assert body.auxiliary_data_hash == decoded.auxiliary_data.hash()
    assert [(str(o.address), o.amount.coin) for o in body.outputs[:2]] == [
        (provider, 4_000_000),
        (treasury, 1_000_000),
    ]
    assert body.ttl == 50_000

    (witness,) = decoded.transaction_witness_set.vkey_witnesses or []
    VerifyKey(witness.vkey.payload).verify(body.hash(), witness.signature)
    assert Address(witness.vkey.hash(), network=NET) == payer_address(payer, NET)
    with pytest.raises(BadSignatureError):
        VerifyKey(witness.vkey.payload).verify(bytes(32), witness.signature)


def test_fee_and_outputs_are_sane(payer: PaymentSigningKey) -> None:
    context = context_for(payer, 20_000_000)
    payment = JobPayment(CONTRACT, JOB, {address(): 3_000_000})
    tx = build_payment([payment], key=payer, context=context)
    body = tx.transaction_body
    size = len(tx.to_cbor())
    linear = OFFLINE_PROTOCOL.min_fee_constant + OFFLINE_PROTOCOL.min_fee_coefficient * size
    assert linear <= body.fee <= linear + 1_000  # the builder may round up a few bytes
    assert body.fee < 300_000
    for output in body.outputs:
        assert output.amount.coin >= min_lovelace_post_alonzo(output, context)
    (change,) = [o for o in body.outputs if o.address == payer_address(payer, NET)]
    assert change.amount.coin == 20_000_000 - 3_000_000 - body.fee  # value is conserved


def test_several_jobs_share_one_output_per_payee(payer: PaymentSigningKey) -> None:
    provider, treasury = address(), address()
    jobs = [
        JobPayment("c3" * 16, JOB, {provider: 2_000_000, treasury: 1_000_000}),
        JobPayment("d4" * 16, JOB, {provider: 3_000_000}),
    ]
    tx = build_payment(jobs, key=payer, context=context_for(payer, 30_000_000))
    outputs = {str(o.address): o.amount.coin for o in tx.transaction_body.outputs}
    assert (outputs[provider], outputs[treasury]) == (5_000_000, 1_000_000)
    metadata = read_payment_metadata(tx)
    assert metadata is not None
    assert [job["paid"] for job in metadata["jobs"]] == [
        [[0, 2_000_000], [1, 1_000_000]],
        [[0, 3_000_000]],
    ]


def test_same_identity_derives_the_same_key_and_it_is_not_the_did_key() -> None:
    identity = Identity.generate()
    key = payment_key_from_identity(identity)
    assert key.payload == payment_key_from_identity(identity).payload
    assert key.payload != identity.seed


@pytest.mark.parametrize(
    ("payouts", "funds", "code"),
    [
        ({"provider": 800}, 20_000_000, "below_min_utxo"),
        ({"mainnet": 2_000_000}, 20_000_000, "bad_address"),
        ({"garbage": 2_000_000}, 20_000_000, "bad_address"),
        ({"provider": 2_000_000}, 1_500_000, "insufficient_funds"),
    ],
)
def test_bad_payments_are_refused(
    payer: PaymentSigningKey, payouts: dict[str, int], funds: int, code: str
) -> None:
    names = {
        "provider": address(),
        "mainnet": str(payer_address(PaymentSigningKey.generate(), Network.MAINNET)),
        "garbage": "addr_test1notanaddress",
    }
    payment = JobPayment(CONTRACT, JOB, {names[k]: v for k, v in payouts.items()})
    with pytest.raises(SettlementError) as refused:
        build_payment([payment], key=payer, context=context_for(payer, funds))
    assert refused.value.code == code


def test_payment_fields_are_checked() -> None:
    with pytest.raises(SettlementError):
        JobPayment("not-a-contract", JOB, {address(): 1})
    with pytest.raises(SettlementError):
        JobPayment(CONTRACT, JOB, {address(): 0})


@dataclass
class Endpoint:
    """A loopback HTTP server answering ``answer`` and keeping every request it got."""

    url: str = ""
    answer: tuple[int, Any] = (200, None)
    requests: list[dict[str, Any]] = field(default_factory=list)


def lowercase(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Header names compare without case (urllib sends ``Project_id``)."""
    return {name.lower(): value for name, value in headers}


def recorder(endpoint: Endpoint) -> type[BaseHTTPRequestHandler]:
    class Recorder(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            endpoint.requests.append(
                {"path": self.path, "headers": lowercase(self.headers.items()), "body": body}
            )
            status, payload = endpoint.answer
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            return None

    return Recorder


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    recorded = Endpoint()
    server = HTTPServer(("127.0.0.1", 0), recorder(recorded))
    recorded.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield recorded
    server.shutdown()
    server.server_close()


@pytest.fixture
def signed(payer: PaymentSigningKey) -> Transaction:
    payment = JobPayment(CONTRACT, JOB, {address(): 2_000_000})
    return build_payment([payment], key=payer, context=context_for(payer, 10_000_000))


def test_blockfrost_submission_posts_cbor_with_the_project_id(
    endpoint: Endpoint, signed: Transaction
) -> None:
    tx_id = str(signed.id)
    endpoint.answer = (200, tx_id)
    url = endpoint.url + "/api/v0"
    settings = CardanoSettings(endpoint="blockfrost", url=url, project_id="preprodXYZ")
    assert CardanoSubmitter(settings).submit(signed) == tx_id
    (request,) = endpoint.requests
    assert request["path"] == "/api/v0/tx/submit"
    assert request["headers"]["content-type"] == "application/cbor"
    assert request["headers"]["project_id"] == "preprodXYZ"
    assert request["body"] == signed.to_cbor()


def test_ogmios_submission_is_a_json_rpc_call(endpoint: Endpoint, signed: Transaction) -> None:
    tx_id = str(signed.id)
    endpoint.answer = (200, {"jsonrpc": "2.0", "result": {"transaction": {"id": tx_id}}})
    settings = CardanoSettings(endpoint="ogmios", url=endpoint.url)
    assert CardanoSubmitter(settings).submit(signed) == tx_id
    (request,) = endpoint.requests
    sent = json.loads(request["body"])
    assert request["headers"]["content-type"] == "application/json"
    assert (sent["jsonrpc"], sent["method"]) == ("2.0", "submitTransaction")
    assert bytes.fromhex(sent["params"]["transaction"]["cbor"]) == signed.to_cbor()


def test_refusals_and_unreachable_endpoints_raise_chain_errors(
    endpoint: Endpoint, signed: Transaction
) -> None:
    endpoint.answer = (200, {"jsonrpc": "2.0", "error": {"code": 3005, "message": "bad"}})
    ogmios = CardanoSubmitter(CardanoSettings(endpoint="ogmios", url=endpoint.url))
    with pytest.raises(ChainError, match="refused"):
        ogmios.submit(signed)
    endpoint.answer = (400, {"error": "Bad Request", "message": "invalid tx"})
    settings = CardanoSettings(endpoint="blockfrost", url=endpoint.url, project_id="p")
    with pytest.raises(ChainError, match="refused \\(400\\)"):
        CardanoSubmitter(settings).submit(signed)
    closed = CardanoSettings(endpoint="ogmios", url="http://127.0.0.1:9", timeout_s=2)
    with pytest.raises(ChainError) as unreachable:
        CardanoSubmitter(closed).submit(signed)
    assert unreachable.value.retryable


def test_settings_are_validated() -> None:
    with pytest.raises(SettlementError):
        CardanoSettings(endpoint="blockfrost", url="https://example.invalid")
    with pytest.raises(SettlementError):
        CardanoSettings(endpoint="ogmios", url="ftp://x")
    with pytest.raises(SettlementError):
        CardanoSubmitter(CardanoSettings())
