"""Gas per settled job on a real chain (anvil): one transaction per job against batches.

Starts anvil on loopback, deploys the test token and the settlement contract, locks one
escrow per job (10 providers, one model creator, jobs assigned round-robin) and settles:
first one ``release`` transaction per job, then ``settle_batch`` over 10, 100 and 1,000
jobs. Gas is read from the transaction receipts, so it includes the 21,000 base cost and
calldata. Baseline measured in the same run: a plain ERC-20 ``transfer`` of the test
token to an address that held none (a provider payout done with a token transfer).

    python bench/settlement.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from computemesh.settlement.anvil import start_anvil, stop_anvil
from computemesh.settlement.batch import BatchItem, JobState, plan_batches
from computemesh.settlement.chain import deploy_settlement
from computemesh.settlement.transactions import ChainClient, chain_key

PROVIDERS = 10
BATCH_SIZES = (10, 100, 1000)
LOCKED = 1_000_000
PAID = 750_000
GOLEM_BATCH_GAS = 14_300


@dataclass
class Bench:
    client: ChainClient
    payer: LocalAccount
    providers: list[str]
    creator: str
    nonce: int = 0

    @property
    def settlement(self) -> Any:
        return self.client.settlement


def funded(w3: Web3) -> LocalAccount:
    key: LocalAccount = Account.create()
    w3.provider.make_request("anvil_setBalance", [key.address, hex(10**21)])  # type: ignore[arg-type]
    return key


def setup(url: str) -> Bench:
    w3 = Web3(Web3.HTTPProvider(url))
    deployer, payer = funded(w3), funded(w3)
    treasury, arbiter = Account.create(), Account.create()
    deployment = deploy_settlement(
        w3, deployer, treasury=treasury.address, arbiter=arbiter.address, test_network=True
    )
    client = ChainClient(w3, deployment, [payer, deployer], operator=payer)
    client.send(client.token.functions.mint(payer.address, 10**15), deployer, "mint")
    client.ensure_allowance(payer, 10**15)
    client.send(
        client.settlement.functions.deposit(payer.address, 10**14, os.urandom(32)), payer, "deposit"
    )
    providers = [Account.create().address for _ in range(PROVIDERS)]
    bench = Bench(client, payer, providers, Account.create().address)
    bench.nonce = w3.eth.get_transaction_count(payer.address)
    return bench


def send_fast(bench: Bench, data: str, gas: int) -> bytes:
    """Send a signed transaction with an explicit nonce, without waiting for it."""
    w3 = bench.client.w3
    tx = {
        "to": bench.settlement.address,
        "data": data,
        "gas": gas,
        "maxFeePerGas": 10**11,
        "maxPriorityFeePerGas": 10**9,
        "nonce": bench.nonce,
        "chainId": bench.client.deployment.chain_id,
        "value": 0,
        "type": 2,
    }
    bench.nonce += 1
    signed = bench.payer.sign_transaction(tx)
    return bytes(w3.eth.send_raw_transaction(signed.raw_transaction))


def lock_jobs(bench: Bench, count: int) -> tuple[list[int], list[int]]:
    """Lock ``count`` jobs (one transaction each); their indices and the gas of each lock."""
    first = bench.settlement.functions.job_count(bench.payer.address).call()
    hashes = []
    for k in range(count):
        data = bench.settlement.encode_abi(
            "lock",
            args=[
                bench.payer.address,
                os.urandom(32),
                bench.providers[(first + k) % PROVIDERS],
                bench.creator,
                LOCKED,
            ],
        )
        hashes.append(send_fast(bench, data, 300_000))
    receipts = [
        bench.client.w3.eth.wait_for_transaction_receipt(h, poll_latency=0.01) for h in hashes
    ]
    if any(r["status"] != 1 for r in receipts):
        raise RuntimeError("a lock failed")
    return list(range(first, first + count)), [int(r["gasUsed"]) for r in receipts]


def settle_one_by_one(bench: Bench, indices: list[int]) -> list[int]:
    """One ``release`` transaction per job (final: pays and refunds the rest)."""
    gas = []
    for index in indices:
        function = bench.settlement.functions.release(
            bench.payer.address, index, chain_key("result", os.urandom(8).hex()), PAID, True
        )
        gas.append(int(bench.client.send(function, bench.payer, "release")["gasUsed"]))
    bench.nonce = bench.client.w3.eth.get_transaction_count(bench.payer.address)
    return gas


def settle_batch(bench: Bench, indices: list[int]) -> int:
    """One ``settle_batch`` transaction over ``indices``; its gas."""
    states = bench.settlement.functions.job_states(bench.payer.address, indices[0], len(indices))
    items = [
        BatchItem(index, PAID, JobState.decode(word).payee_set)
        for index, word in zip(indices, states.call(), strict=True)
    ]
    [call] = plan_batches(items)
    function = bench.settlement.functions.settle_batch(
        bench.payer.address, call.first, call.count, call.payees, call.entries, os.urandom(32)
    )
    receipt = bench.client.send(function, bench.payer, "settle_batch")
    bench.nonce = bench.client.w3.eth.get_transaction_count(bench.payer.address)
    return int(receipt["gasUsed"])


def erc20_transfer_gas(bench: Bench) -> int:
    token = bench.client.token.functions.transfer(Account.create().address, PAID)
    gas = int(bench.client.send(token, bench.payer, "transfer")["gasUsed"])
    bench.nonce = bench.client.w3.eth.get_transaction_count(bench.payer.address)
    return gas


def measure(url: str, singles: int) -> dict[str, Any]:
    bench = setup(url)
    transfer = erc20_transfer_gas(bench)
    indices, lock_gas = lock_jobs(bench, singles + sum(BATCH_SIZES))
    single_gas = settle_one_by_one(bench, indices[:singles])
    per_job = {"1": round(statistics.mean(single_gas))}
    offset = singles
    for size in BATCH_SIZES:
        gas = settle_batch(bench, indices[offset : offset + size])
        per_job[str(size)] = round(gas / size)
        offset += size
    escrowed = bench.settlement.functions.escrowed(bench.payer.address).call()
    if escrowed != 0:
        raise RuntimeError(f"{escrowed} units still escrowed after settling every job")
    return {
        "gas_per_job": per_job,
        "erc20_transfer_gas": transfer,
        "lock_gas_per_job": round(statistics.mean(lock_gas)),
        "jobs": len(indices),
        "providers": PROVIDERS,
    }


def print_table(result: dict[str, Any]) -> None:
    transfer = result["erc20_transfer_gas"]
    print(f"{'settlement':<24}{'gas per job':>12}{'/ ERC-20 transfer':>19}{'/ Golem batch':>15}")
    for size, gas in result["gas_per_job"].items():
        label = "one tx per job" if size == "1" else f"batch of {size}"
        print(f"{label:<24}{gas:>12}{gas / transfer:>19.3f}{gas / GOLEM_BATCH_GAS:>15.3f}")
    print(f"{'ERC-20 transfer':<24}{transfer:>12}")
    print(f"{'lock (one tx per job)':<24}{result['lock_gas_per_job']:>12}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--singles", type=int, default=100, help="jobs released one by one")
    parser.add_argument("--quick", action="store_true", help="20 single releases")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args()
    singles = 20 if args.quick else args.singles
    node = start_anvil()
    try:
        result = measure(node.url, singles)
    finally:
        stop_anvil(node)
    result["machine"] = f"{platform.machine()} python {platform.python_version()}"
    print_table(result)
    if args.json:
        print(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
