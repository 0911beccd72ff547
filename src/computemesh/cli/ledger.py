"""`cmesh wallet` (balances, stake, history) and `cmesh ledger` (init, deploy, verify).

Both work on the ledger the home settles on (``app.ledger.open_home_ledger``): the
backend `cmesh ledger init --backend evm` configured, else the embedded ledger
``$CMESH_HOME/ledger.db``; ``--ledger PATH`` names an embedded ledger file instead.
Amounts are typed and shown in credits (six decimals) and kept as integer units.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from computemesh.app.ledger import bind_own_account, open_evm_ledger, open_home_ledger
from computemesh.app.ledger_config import (
    BACKENDS,
    EvmLedgerConfig,
    bad_config,
    chain_of,
    save_ledger_config,
)
from computemesh.cli.context import home_of
from computemesh.cli.output import console, emit_json, err_console, reported_errors, short
from computemesh.identity import Identity, load_or_create_identity
from computemesh.settlement import (
    Ledger,
    LedgerSettings,
    Receipt,
    SettlementError,
    SqliteLedger,
    credits_to_units,
    format_credits,
)
from computemesh.settlement.amounts import Split, parse_split
from computemesh.settlement.bindings import account_from_identity

wallet_app = typer.Typer(
    help="Your balances, stake and history on the ledger.", no_args_is_help=True
)
ledger_app = typer.Typer(
    help="The ledger: choose and create it (embedded or on a chain), verify it.",
    no_args_is_help=True,
)

LedgerOption = typer.Option(
    None, "--ledger", help="Embedded ledger file (default: the home's configured ledger)."
)
JsonOption = typer.Option(False, "--json", help="Print one JSON object.")


def _ledger_path(ctx: typer.Context, explicit: Path | None) -> Path:
    return explicit if explicit is not None else home_of(ctx).ledger_db


def _open(ctx: typer.Context, explicit: Path | None) -> Ledger:
    home = home_of(ctx)
    home.ensure()
    return open_home_ledger(home, load_or_create_identity(home.root), path=explicit)


def _own_identity(ctx: typer.Context) -> Identity:
    home = home_of(ctx)
    home.ensure()
    return load_or_create_identity(home.root)


def _own_did(ctx: typer.Context) -> str:
    return _own_identity(ctx).did


def receipt_row(receipt: Receipt) -> dict[str, Any]:
    body = receipt.body
    return {
        "op": receipt.op,
        "op_id": receipt.op_id,
        "amount": receipt.amount,
        "refund": receipt.refund,
        "contract_id": body.get("contract_id"),
        "at_ms": body.get("at_ms"),
    }


@ledger_app.command("init")
def init(
    ctx: typer.Context,
    backend: str = typer.Option("sqlite", "--backend", help="sqlite (embedded) or evm."),
    treasury: str | None = typer.Option(None, "--treasury", help="Treasury DID (default: you)."),
    arbiter: list[str] = typer.Option([], "--arbiter", help="DID allowed to sign fraud records."),
    verifier: list[str] = typer.Option([], "--verifier", help="DID trusted to attest results."),
    split: str | None = typer.Option(
        None, "--split", help="PROVIDER/TREASURY/CREATOR percent, adding up to 100 (80/15/5)."
    ),
    rpc_url: str | None = typer.Option(None, "--rpc-url", help="evm: the chain's JSON-RPC URL."),
    chain: str | None = typer.Option(None, "--chain", help="evm: ethereum, base, local, ..."),
    chain_id: int | None = typer.Option(None, "--chain-id", help="evm: the chain's id."),
    deployment: Path | None = typer.Option(
        None, "--deployment", help="evm: JSON of the settlement contract's deployment."
    ),
    ledger: Path | None = LedgerOption,
    as_json: bool = JsonOption,
) -> None:
    """Choose this home's ledger: create an embedded one, or settle on an EVM chain.

    With ``--backend evm`` the chain and deployment are checked, this home's chain
    account (derived from its identity; it needs gas) is bound to its DID, and the
    choice is kept in ``<home>/ledger.json`` for `cmesh wallet` and the mesh.
    """
    with reported_errors(as_json=as_json):
        home = home_of(ctx)
        if backend not in BACKENDS:
            raise bad_config(f"unknown ledger backend {backend!r}", hint=f"one of {BACKENDS}")
        if home.ledger_config.exists():
            raise SettlementError(
                f"{home.ledger_config} exists already: this home has chosen its ledger",
                code="ledger_exists",
            )
        chain_options = {"--rpc-url": rpc_url, "--chain": chain, "--chain-id": chain_id}
        identity = _own_identity(ctx)
        rules = LedgerSettings(
            treasury=treasury or identity.did,
            split=parse_split(split) if split else Split(),
            arbiters=frozenset(arbiter),
            verifiers=frozenset(verifier),
        )
        if backend == "sqlite":
            given = [name for name, value in chain_options.items() if value is not None]
            if given or deployment is not None:
                raise bad_config(f"{given or ['--deployment']} only apply to --backend evm")
            data = _init_sqlite(_ledger_path(ctx, ledger), identity, rules)
        else:
            if rpc_url is None or deployment is None or ledger is not None:
                raise bad_config(
                    "--backend evm needs --rpc-url, --chain or --chain-id, and --deployment"
                    " (and no --ledger)"
                )
            chain_settings = chain_of(rpc_url, name=chain, chain_id=chain_id)
            config = EvmLedgerConfig(
                chain=chain_settings,
                deployment=_load_deployment(deployment),
                settings=rules if split else _with_split(rules, deployment),
            )
            data = _init_evm(ctx, config, identity)
        if as_json:
            emit_json(data)
        else:
            console.print(f"created the {backend} ledger: {data['ledger']}", highlight=False)


def _init_sqlite(path: Path, identity: Identity, rules: LedgerSettings) -> dict[str, Any]:
    if path.exists():
        raise SettlementError(f"{path} exists already", code="ledger_exists")
    opened = SqliteLedger.open(path, identity, rules)
    return {
        "backend": "sqlite",
        "ledger": str(path),
        "ledger_id": opened.ledger_id,
        **rules.to_dict(),
    }


def _load_deployment(path: Path) -> Any:
    from computemesh.settlement.chain import Deployment

    try:
        return Deployment.load(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise bad_config(f"cannot read the deployment {path}: {exc!r}") from exc


def _with_split(rules: LedgerSettings, deployment: Path) -> LedgerSettings:
    """``rules`` with the deployment's split (a deployment fixes its split)."""
    split = _load_deployment(deployment).split
    return LedgerSettings(rules.treasury, split, rules.arbiters, rules.verifiers)


def _init_evm(ctx: typer.Context, config: EvmLedgerConfig, identity: Identity) -> dict[str, Any]:
    home = home_of(ctx)
    ledger = open_evm_ledger(config, identity, receipts=home.ledger_receipts)
    binding = bind_own_account(ledger, identity)
    save_ledger_config(home, config)
    return {
        "backend": "evm",
        "ledger": f"chain {config.chain.chain_id} contract {config.deployment.settlement}",
        "config": str(home.ledger_config),
        "chain_id": config.chain.chain_id,
        "settlement": config.deployment.settlement,
        "address": binding.body["address"],
        **config.settings.to_dict(),
    }


@ledger_app.command("deploy")
def deploy(
    ctx: typer.Context,
    rpc_url: str = typer.Option(..., "--rpc-url", help="The chain's JSON-RPC URL."),
    chain: str | None = typer.Option(None, "--chain", help="ethereum, base, local, ..."),
    chain_id: int | None = typer.Option(None, "--chain-id", help="The chain's id."),
    out: Path = typer.Option(..., "--out", help="File to write the deployment to (JSON)."),
    split: str | None = typer.Option(
        None, "--split", help="PROVIDER/TREASURY/CREATOR percent, adding up to 100 (80/15/5)."
    ),
    treasury_address: str | None = typer.Option(
        None, "--treasury-address", help="Chain address of the treasury (default: yours)."
    ),
    arbiter_address: str | None = typer.Option(
        None, "--arbiter-address", help="Chain address allowed to slash (default: yours)."
    ),
    token: str | None = typer.Option(
        None, "--token", help="ERC-20 to pay in (default on test networks: a new test token)."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Deploy the settlement contract (and a test token) from this home's chain account.

    The account (`cmesh wallet address`) pays the gas. The deployment written to ``--out``
    is what `cmesh ledger init --backend evm --deployment FILE` reads.
    """
    with reported_errors(as_json=as_json):
        from computemesh.app.ledger_deploy import deploy_ledger

        if out.exists():
            raise SettlementError(f"{out} exists already", code="deployment_exists")
        deployment = deploy_ledger(
            chain_of(rpc_url, name=chain, chain_id=chain_id),
            _own_identity(ctx),
            split=parse_split(split) if split else None,
            treasury=treasury_address,
            arbiter=arbiter_address,
            token=token,
        )
        deployment.save(out)
        if as_json:
            emit_json({"deployment": deployment.to_dict(), "out": str(out)})
        else:
            console.print(
                f"deployed settlement {deployment.settlement} (token {deployment.token})"
                f" on chain {deployment.chain_id}; written to {out}",
                highlight=False,
            )


@ledger_app.command("verify")
def verify(
    ctx: typer.Context, ledger: Path | None = LedgerOption, as_json: bool = JsonOption
) -> None:
    """Check every entry's signature, the hash chain, double entry and the balances."""
    with reported_errors(as_json=as_json):
        opened = _open(ctx, ledger)
        if not isinstance(opened, SqliteLedger):
            raise SettlementError(
                "`cmesh ledger verify` checks an embedded ledger; this home settles on a chain",
                code="not_supported",
                hint="check a receipt against the chain instead, or pass --ledger FILE",
            )
        report = opened.verify()
        if as_json:
            emit_json(report.to_dict())
        elif report.ok:
            console.print(
                f"ok: {report.entries} entries, head {report.head[:16]}, "
                f"supply {format_credits(report.supply)} credits",
                highlight=False,
            )
        else:
            err_console.print(f"[bold red]the ledger does not verify[/] ({report.entries} entries)")
            for problem in report.problems:
                err_console.print(f"  - {problem}", highlight=False)
        if not report.ok:
            raise typer.Exit(1)


@wallet_app.command("balance")
def balance(
    ctx: typer.Context,
    did: str | None = typer.Argument(None, help="Account DID (default: this home's)."),
    ledger: Path | None = LedgerOption,
    as_json: bool = JsonOption,
) -> None:
    """Available, escrowed and staked credits of an account."""
    with reported_errors(as_json=as_json):
        result = _open(ctx, ledger).balance(did or _own_did(ctx))
        if as_json:
            emit_json(result.to_dict())
            return
        table = Table(title=f"wallet {short(result.did)}")
        for column in ("available", "escrowed", "staked"):
            table.add_column(column, justify="right")
        table.add_row(
            *(format_credits(v) for v in (result.available, result.escrowed, result.staked))
        )
        console.print(table)


@wallet_app.command("address")
def address(ctx: typer.Context, as_json: bool = JsonOption) -> None:
    """This home's chain account (derived from its identity): fund it with gas on a chain."""
    with reported_errors(as_json=as_json):
        identity = _own_identity(ctx)
        account = account_from_identity(identity).address
        if as_json:
            emit_json({"did": identity.did, "address": account})
        else:
            console.print(account, highlight=False)


@wallet_app.command("history")
def history(
    ctx: typer.Context,
    did: str | None = typer.Argument(None, help="Account DID (default: this home's)."),
    ledger: Path | None = LedgerOption,
    as_json: bool = JsonOption,
) -> None:
    """Every operation that involved an account, oldest first."""
    with reported_errors(as_json=as_json):
        rows = [receipt_row(r) for r in _open(ctx, ledger).history(did or _own_did(ctx))]
        if as_json:
            emit_json({"history": rows})
            return
        table = Table(title=f"{len(rows)} operation(s)")
        for column in ("op", "amount", "refund", "contract"):
            table.add_column(column)
        for row in rows:
            amount, refund = format_credits(row["amount"]), format_credits(row["refund"])
            table.add_row(row["op"], amount, refund, row["contract_id"] or "-")
        console.print(table)


@wallet_app.command("deposit")
def deposit(
    ctx: typer.Context,
    amount: str = typer.Argument(..., help="Credits, e.g. 12.5"),
    did: str | None = typer.Option(None, "--to", help="Account DID (default: this home's)."),
    deposit_id: str | None = typer.Option(None, "--id", help="Idempotency id (default: new)."),
    ledger: Path | None = LedgerOption,
    as_json: bool = JsonOption,
) -> None:
    """Credit an account from outside the ledger (its operator's faucet on test networks)."""
    with reported_errors(as_json=as_json):
        units = credits_to_units(amount)
        op_id = deposit_id or f"cli-{os.urandom(8).hex()}"
        receipt = _open(ctx, ledger).deposit(did or _own_did(ctx), units, deposit_id=op_id)
        _print_receipt(receipt, as_json=as_json)


@wallet_app.command("stake")
def stake(
    ctx: typer.Context,
    amount: str = typer.Argument(..., help="Credits to move into stake, e.g. 10"),
    stake_id: str | None = typer.Option(None, "--id", help="Idempotency id (default: new)."),
    ledger: Path | None = LedgerOption,
    as_json: bool = JsonOption,
) -> None:
    """Move credits of this home's account into its stake."""
    with reported_errors(as_json=as_json):
        units = credits_to_units(amount)
        op_id = stake_id or f"cli-{os.urandom(8).hex()}"
        receipt = _open(ctx, ledger).stake(_own_did(ctx), units, stake_id=op_id)
        _print_receipt(receipt, as_json=as_json)


def _print_receipt(receipt: Receipt, *, as_json: bool) -> None:
    if as_json:
        emit_json({"receipt": receipt.to_dict()})
    else:
        console.print(
            f"{receipt.op} {format_credits(receipt.amount)} credits ({receipt.op_id})",
            highlight=False,
        )


cardano_app = typer.Typer(
    help="Cardano payments: build and sign offline, submit through Ogmios or Blockfrost.",
    no_args_is_help=True,
)
ledger_app.add_typer(cardano_app, name="cardano")

NetworkOption = typer.Option("preprod", "--network", help="mainnet, preprod or preview.")
KeyFileOption = typer.Option(
    None, "--key-file", help="cardano-cli payment .skey (default: derived from your DID)."
)


def _cardano_key(ctx: typer.Context, key_file: Path | None) -> Any:
    from pycardano import PaymentSigningKey  # type: ignore[import-untyped]

    from computemesh.settlement.cardano import payment_key_from_identity

    if key_file is not None:
        return PaymentSigningKey.load(str(key_file))
    home = home_of(ctx)
    home.ensure()
    return payment_key_from_identity(load_or_create_identity(home.root))


def _parse_pair(text: str, what: str) -> tuple[str, int]:
    """``LEFT:AMOUNT`` split at its last colon; ``SettlementError`` naming ``what``."""
    left, _, amount = text.rpartition(":")
    if not left or not amount.isdigit():
        raise SettlementError(f"{what} must look like NAME:LOVELACE, got {text!r}", code="bad_id")
    return left, int(amount)


@cardano_app.command("address")
def cardano_address(
    ctx: typer.Context,
    network: str = NetworkOption,
    key_file: Path | None = KeyFileOption,
    as_json: bool = JsonOption,
) -> None:
    """The address payments are sent from (and change returns to)."""
    with reported_errors(as_json=as_json):
        from computemesh.settlement.cardano import CardanoSettings, payer_address

        settings = CardanoSettings(network=network)  # type: ignore[arg-type]
        address = str(payer_address(_cardano_key(ctx, key_file), settings.network_id))
        if as_json:
            emit_json({"network": network, "address": address})
        else:
            console.print(address, highlight=False)


@cardano_app.command("build")
def cardano_build(
    ctx: typer.Context,
    contract: str = typer.Option(..., "--contract", help="Contract id the payment settles."),
    job: str = typer.Option(..., "--job", help="Job id of the contract."),
    pay: list[str] = typer.Option(..., "--pay", help="ADDRESS:LOVELACE, once per payee."),
    utxo: list[str] = typer.Option(
        ..., "--utxo", help="TXID#INDEX:LOVELACE of the payer's, once per UTxO to spend."
    ),
    out: Path = typer.Option(..., "--out", help="File for the signed transaction (CBOR hex)."),
    ttl: int | None = typer.Option(None, "--ttl", min=0, help="Last valid slot."),
    network: str = NetworkOption,
    key_file: Path | None = KeyFileOption,
    as_json: bool = JsonOption,
) -> None:
    """Build and sign a payment offline, with the job in its metadata; nothing is sent."""
    with reported_errors(as_json=as_json):
        from pycardano import TransactionInput, TransactionOutput, UTxO

        from computemesh.settlement.cardano import (
            CardanoSettings,
            JobPayment,
            OfflineChainContext,
            build_payment,
            payer_address,
            read_payment_metadata,
        )

        settings = CardanoSettings(network=network)  # type: ignore[arg-type]
        key = _cardano_key(ctx, key_file)
        payer = payer_address(key, settings.network_id)
        spendable = []
        for item in utxo:
            reference, lovelace = _parse_pair(item, "--utxo")
            tx_id, _, index = reference.partition("#")
            if not index.isdigit():
                raise SettlementError(f"--utxo needs TXID#INDEX, got {reference!r}", code="bad_id")
            source = TransactionInput.from_primitive([tx_id, int(index)])
            spendable.append(UTxO(source, TransactionOutput(payer, lovelace)))
        payouts = dict(_parse_pair(item, "--pay") for item in pay)
        context = OfflineChainContext(network=settings.network_id, utxos={str(payer): spendable})
        tx = build_payment([JobPayment(contract, job, payouts)], key=key, context=context, ttl=ttl)
        out.write_text(tx.to_cbor_hex())
        data = {
            "tx_id": str(tx.id),
            "fee": tx.transaction_body.fee,
            "size": len(tx.to_cbor()),
            "metadata": read_payment_metadata(tx),
            "out": str(out),
        }
        if as_json:
            emit_json(data)
        else:
            console.print(
                f"signed {data['tx_id']} ({data['size']} bytes, fee {data['fee']} lovelace)"
                f" written to {out}",
                highlight=False,
            )


@cardano_app.command("submit")
def cardano_submit(
    tx_file: Path = typer.Argument(..., help="A signed transaction (CBOR hex) from `build`."),
    endpoint: str = typer.Option(..., "--endpoint", help="ogmios or blockfrost."),
    url: str = typer.Option(..., "--url", help="Ogmios HTTP URL, or Blockfrost API base URL."),
    project_id: str | None = typer.Option(
        None, "--project-id", envvar="BLOCKFROST_PROJECT_ID", help="Blockfrost project id."
    ),
    network: str = NetworkOption,
    as_json: bool = JsonOption,
) -> None:
    """Send a signed transaction through the configured endpoint."""
    with reported_errors(as_json=as_json):
        from computemesh.settlement.cardano import (
            CardanoSettings,
            CardanoSubmitter,
            read_transaction,
        )

        settings = CardanoSettings(
            network=network,  # type: ignore[arg-type]
            endpoint=endpoint,  # type: ignore[arg-type]
            url=url,
            project_id=project_id,
        )
        tx = read_transaction(tx_file.read_text())
        tx_id = CardanoSubmitter(settings).submit(tx)
        if as_json:
            emit_json({"tx_id": tx_id, "endpoint": endpoint})
        else:
            console.print(f"submitted {tx_id} through {endpoint}", highlight=False)
