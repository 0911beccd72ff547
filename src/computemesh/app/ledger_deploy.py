"""Deploying a network's settlement contracts (`cmesh ledger deploy`, a local mesh's chain).

The deployer is the home's chain account, derived from its identity
(``account_from_identity``, `cmesh wallet address`); it pays the gas. The treasury and the
arbiter are chain addresses (default: the deployer's). On a test network, when no token
is named, a test ``PaymentToken`` is deployed too, minted by the deployer
(``mint_test_tokens``); a production chain needs an existing token. The ``Deployment`` is
what `cmesh ledger init --backend evm --deployment FILE` reads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from computemesh.app.ledger_config import bad_config
from computemesh.identity import Identity
from computemesh.settlement import SettlementError, Split
from computemesh.settlement.bindings import account_from_identity

if TYPE_CHECKING:
    from computemesh.settlement.chain import ChainSettings, Deployment


def deploy_ledger(
    chain: ChainSettings,
    identity: Identity,
    *,
    split: Split | None = None,
    treasury: str | None = None,
    arbiter: str | None = None,
    token: str | None = None,
) -> Deployment:
    """Deploy the settlement contract (and a test token on a test network without
    ``token``) on ``chain`` from ``identity``'s account.

    Raises ``SettlementError``: ``bad_ledger_config`` (an address that is not one, a new
    token asked of a production chain), ``no_gas`` (the deployer holds no gas),
    ``chain_unreachable`` or ``wrong_chain``; ``deploy_failed`` when a deployment reverts.
    """
    from computemesh.settlement.chain import connect, deploy_settlement

    treasury_address = _address(treasury, "--treasury-address")
    arbiter_address = _address(arbiter, "--arbiter-address")
    token_address = _address(token, "--token")
    if token_address is None and not chain.test_network:
        raise bad_config(
            f"chain {chain.name or chain.chain_id} is not a test network: name its token",
            hint="--token ADDRESS of the ERC-20 the network pays in",
        )
    w3 = connect(chain)
    deployer = account_from_identity(identity)
    if w3.eth.get_balance(deployer.address) == 0:
        raise SettlementError(
            f"the deploying account {deployer.address} holds no gas on chain {chain.chain_id}",
            code="no_gas",
            hint="send it some of the chain's native coin (`cmesh wallet address`)",
        )
    return deploy_settlement(
        w3,
        deployer,
        treasury=treasury_address or deployer.address,
        arbiter=arbiter_address or deployer.address,
        split=split,
        token=token_address,
        test_network=chain.test_network,
    )


def mint_test_tokens(
    chain: ChainSettings, deployment: Deployment, minter: Identity, *, to: str, amount: int
) -> None:
    """Mint ``amount`` units of the deployment's test token to ``to``; ``minter`` is the
    identity whose account deployed the token."""
    from computemesh.settlement.chain import connect
    from computemesh.settlement.transactions import ChainClient

    account = account_from_identity(minter)
    client = ChainClient(connect(chain), deployment, [account])
    client.send(client.token.functions.mint(to, amount), account, "mint")


def _address(value: str | None, option: str) -> str | None:
    from eth_utils.address import is_address, to_checksum_address

    if value is None:
        return None
    if not is_address(value):
        raise bad_config(f"{option} must be a chain address (0x and 40 hex digits), got {value!r}")
    return str(to_checksum_address(value))
