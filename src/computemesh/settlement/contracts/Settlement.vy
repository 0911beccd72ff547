#pragma version ~=0.4.3
"""
@title computemesh settlement
@notice Internal balances over one ERC-20 token; escrow per compute contract, released per
        verified result (split between provider, treasury and model creator) or settled in
        batches; provider stake, slashed only against a recorded fraud report.
@dev Amounts are in the token's smallest unit. Each payer's jobs are numbered 0, 1, 2, ...
     and four job records of 64 bits share one storage slot:
         record = payee set id (24 bits) << 40 | remaining escrow (40 bits)
     A settled job is one bit in a per-payer bitmap (256 jobs per slot). A batch settles a
     range of one payer's jobs: per job it reads a quarter of a slot, flips a bit and adds to
     in-memory sums; provider, creator and treasury balances are written once per batch.
"""

from ethereum.ercs import IERC20

BPS: constant(uint256) = 10000
AMOUNT_MASK: constant(uint256) = 1099511627775  # 2**40 - 1
SKIP: constant(uint256) = AMOUNT_MASK  # a batch entry whose amount is all ones is skipped
MAX_AMOUNT: constant(uint256) = 1099511627774  # 2**40 - 2: the most one job may lock
MAX_PAYEE_SETS: constant(uint256) = 16777215  # 2**24 - 1
RECORD_MASK: constant(uint256) = 18446744073709551615  # 2**64 - 1
ENTRY_MASK: constant(uint256) = 281474976710655  # 2**48 - 1: amount (40) | position (8)
ENTRIES_PER_WORD: constant(uint256) = 5
MAX_BATCH: constant(uint256) = 1280
MAX_WORDS: constant(uint256) = 256
MAX_BATCH_PAYEES: constant(uint256) = 256


struct PayeeSet:
    provider: address
    creator: address


struct FraudReport:
    provider: address
    evidence: bytes32
    slashed: bool


event Bound:
    account: indexed(address)
    did_hash: indexed(bytes32)

event Deposited:
    deposit_id: indexed(bytes32)
    beneficiary: indexed(address)
    amount: uint256

event Withdrawn:
    account: indexed(address)
    amount: uint256

event Locked:
    contract_id: indexed(bytes32)
    payer: indexed(address)
    index: uint256
    payee_set: uint256
    amount: uint256

event Released:
    result_id: indexed(bytes32)
    payer: indexed(address)
    index: uint256
    amount: uint256
    refund: uint256
    final: bool

event Refunded:
    payer: indexed(address)
    index: indexed(uint256)
    amount: uint256

event BatchSettled:
    batch_ref: indexed(bytes32)
    payer: indexed(address)
    first: uint256
    count: uint256
    paid: uint256
    refund: uint256

event Staked:
    stake_id: indexed(bytes32)
    provider: indexed(address)
    amount: uint256

event FraudReported:
    fraud_id: indexed(bytes32)
    provider: indexed(address)
    evidence: bytes32

event Slashed:
    fraud_id: indexed(bytes32)
    provider: indexed(address)
    amount: uint256


token: public(immutable(IERC20))
treasury: public(immutable(address))
arbiter: public(immutable(address))
provider_bps: public(immutable(uint256))
treasury_bps: public(immutable(uint256))
creator_bps: public(immutable(uint256))

balances: public(HashMap[address, uint256])
escrowed: public(HashMap[address, uint256])
staked: public(HashMap[address, uint256])
operators: public(HashMap[address, HashMap[address, bool]])
did_of: public(HashMap[address, bytes32])
account_of: public(HashMap[bytes32, address])

payee_sets: public(HashMap[uint256, PayeeSet])
payee_set_ids: HashMap[bytes32, uint256]
payee_set_count: public(uint256)

job_count: public(HashMap[address, uint256])
job_of: public(HashMap[bytes32, uint256])  # contract id -> payer << 96 | (index + 1)
job_slots: HashMap[address, HashMap[uint256, uint256]]
settled_words: HashMap[address, HashMap[uint256, uint256]]

deposits: public(HashMap[bytes32, bool])
results: public(HashMap[bytes32, bool])
stakes: public(HashMap[bytes32, bool])
frauds: public(HashMap[bytes32, FraudReport])


@deploy
def __init__(
    token_: IERC20,
    treasury_: address,
    arbiter_: address,
    provider_bps_: uint256,
    treasury_bps_: uint256,
    creator_bps_: uint256,
):
    assert provider_bps_ + treasury_bps_ + creator_bps_ == BPS, "split must add up to 10000"
    assert treasury_ != empty(address), "no treasury"
    token = token_
    treasury = treasury_
    arbiter = arbiter_
    provider_bps = provider_bps_
    treasury_bps = treasury_bps_
    creator_bps = creator_bps_


# accounts ---------------------------------------------------------------------------------

@external
def set_operator(operator: address, allowed: bool):
    """@notice Let `operator` lock, release, refund and stake for the sender."""
    self.operators[msg.sender][operator] = allowed


@external
def bind(did_hash: bytes32):
    """@notice Bind the sender's address to a DID (sha256 of its text), once: a DID bound
    to one account cannot be claimed by another, nor an account moved to another DID."""
    assert did_hash != empty(bytes32), "empty DID hash"
    bound_did: bytes32 = self.did_of[msg.sender]
    assert bound_did == empty(bytes32) or bound_did == did_hash, "account bound to another DID"
    bound_account: address = self.account_of[did_hash]
    assert (
        bound_account == empty(address) or bound_account == msg.sender
    ), "DID bound to another account"
    self.did_of[msg.sender] = did_hash
    self.account_of[did_hash] = msg.sender
    log Bound(account=msg.sender, did_hash=did_hash)


@external
def deposit(beneficiary: address, amount: uint256, deposit_id: bytes32):
    """@notice Move `amount` tokens from the sender into `beneficiary`'s balance, once per id."""
    assert deposit_id != empty(bytes32), "empty deposit id"
    assert not self.deposits[deposit_id], "deposit id already used"
    assert amount > 0, "nothing to deposit"
    self.deposits[deposit_id] = True
    assert extcall token.transferFrom(msg.sender, self, amount, default_return_value=True)
    self.balances[beneficiary] += amount
    log Deposited(deposit_id=deposit_id, beneficiary=beneficiary, amount=amount)


@external
def withdraw(amount: uint256):
    """@notice Move `amount` of the sender's balance out as tokens."""
    assert self.balances[msg.sender] >= amount, "insufficient balance"
    self.balances[msg.sender] -= amount
    assert extcall token.transfer(msg.sender, amount, default_return_value=True)
    log Withdrawn(account=msg.sender, amount=amount)


# escrow -----------------------------------------------------------------------------------

@external
def lock(
    payer: address, contract_id: bytes32, provider: address, creator: address, amount: uint256
) -> uint256:
    """
    @notice Lock `amount` of `payer`'s balance for one contract; returns the job index.
    @dev `creator` empty means the job names no model creator: that share goes to the treasury.
    """
    self._check_authorized(payer)
    assert contract_id != empty(bytes32), "empty contract id"
    assert self.job_of[contract_id] == 0, "contract already locked"
    assert provider != empty(address), "no provider"
    assert amount > 0 and amount <= MAX_AMOUNT, "amount out of range"
    assert self.balances[payer] >= amount, "insufficient balance"
    self.balances[payer] -= amount
    self.escrowed[payer] += amount
    payee_set: uint256 = self._payee_set(provider, creator)
    index: uint256 = self.job_count[payer]
    self.job_count[payer] = index + 1
    self.job_of[contract_id] = convert(payer, uint256) << 96 | (index + 1)
    record: uint256 = payee_set << 40 | amount
    self.job_slots[payer][index >> 2] |= record << ((index & 3) << 6)
    log Locked(contract_id=contract_id, payer=payer, index=index, payee_set=payee_set, amount=amount)
    return index


@external
def release(payer: address, index: uint256, result_id: bytes32, amount: uint256, final: bool):
    """
    @notice Pay `amount` of one job's escrow for the verified result `result_id`, split by
            the network's shares; `final` closes the job and refunds what is left.
    """
    self._check_authorized(payer)
    assert result_id != empty(bytes32), "no verified result"
    assert not self.results[result_id], "result already released"
    self.results[result_id] = True
    record: uint256 = self._open_record(payer, index)
    remaining: uint256 = record & AMOUNT_MASK
    assert amount <= remaining, "exceeds escrow"
    self._pay(record >> 40, amount)
    refund: uint256 = 0
    if final:
        refund = remaining - amount
        self.balances[payer] += refund
        self._mark_settled(payer, index)
    else:
        offset: uint256 = (index & 3) << 6
        slot: uint256 = self.job_slots[payer][index >> 2]
        cleared: uint256 = slot & ~(AMOUNT_MASK << offset)
        self.job_slots[payer][index >> 2] = cleared | ((remaining - amount) << offset)
    self.escrowed[payer] -= amount + refund
    log Released(result_id=result_id, payer=payer, index=index, amount=amount, refund=refund, final=final)


@external
def refund(payer: address, index: uint256):
    """@notice Close one job and return its remaining escrow to the payer."""
    self._check_authorized(payer)
    record: uint256 = self._open_record(payer, index)
    remaining: uint256 = record & AMOUNT_MASK
    self._mark_settled(payer, index)
    self.balances[payer] += remaining
    self.escrowed[payer] -= remaining
    log Refunded(payer=payer, index=index, amount=remaining)


@external
def settle_batch(
    payer: address,
    first: uint256,
    count: uint256,
    payees: DynArray[uint256, MAX_BATCH_PAYEES],
    entries: DynArray[uint256, MAX_WORDS],
    batch_ref: bytes32,
):
    """
    @notice Settle jobs `first` .. `first + count - 1` of `payer` in one transaction: each
            is paid its amount (split as in `release`) and closed, the rest refunded.
    @dev `entries` packs five 48-bit entries per word, lowest first: bits 0-39 the amount
         (all ones: skip this job), bits 40-47 the position in `payees` of the job's payee
         set. Reverts if any job is settled, overpaid or named with the wrong payee set.
    """
    self._check_authorized(payer)
    assert count > 0 and count <= MAX_BATCH, "batch size out of range"
    assert first + count <= self.job_count[payer], "no such job"
    # per payee set position: creator share << 128 | provider share (sums stay below 2**64)
    sums: uint256[MAX_BATCH_PAYEES] = empty(uint256[MAX_BATCH_PAYEES])
    paid: uint256 = 0
    escrow: uint256 = 0
    slot_index: uint256 = max_value(uint256)
    slot: uint256 = 0
    word_index: uint256 = first >> 8
    bits: uint256 = self.settled_words[payer][word_index]
    i: uint256 = first
    end: uint256 = first + count
    for word: uint256 in entries:
        packed: uint256 = word
        for q: uint256 in range(ENTRIES_PER_WORD):
            if i == end:
                break
            amount: uint256 = packed & AMOUNT_MASK
            position: uint256 = (packed >> 40) & 255
            packed = packed >> 48
            if amount != SKIP:
                if i >> 2 != slot_index:
                    slot_index = i >> 2
                    slot = self.job_slots[payer][slot_index]
                if i >> 8 != word_index:
                    self.settled_words[payer][word_index] = bits
                    word_index = i >> 8
                    bits = self.settled_words[payer][word_index]
                bit: uint256 = 1 << (i & 255)
                assert bits & bit == 0, "already settled"
                bits = bits | bit
                record: uint256 = (slot >> ((i & 3) << 6)) & RECORD_MASK
                remaining: uint256 = record & AMOUNT_MASK
                assert amount <= remaining, "exceeds escrow"
                assert payees[position] == record >> 40, "wrong payee set"
                to_treasury: uint256 = unsafe_div(unsafe_mul(amount, treasury_bps), BPS)
                to_creator: uint256 = unsafe_div(unsafe_mul(amount, creator_bps), BPS)
                sums[position] = unsafe_add(
                    sums[position],
                    to_creator << 128 | unsafe_sub(unsafe_sub(amount, to_treasury), to_creator),
                )
                paid = unsafe_add(paid, amount)
                escrow = unsafe_add(escrow, remaining)
            i = unsafe_add(i, 1)
    assert i == end, "entries too short"
    self.settled_words[payer][word_index] = bits
    to_payees: uint256 = 0
    for position: uint256 in range(len(payees), bound=MAX_BATCH_PAYEES):
        to_provider: uint256 = sums[position] & RECORD_MASK
        to_creator: uint256 = sums[position] >> 128
        if to_provider | to_creator == 0:
            continue
        payee_set: PayeeSet = self.payee_sets[payees[position]]
        self.balances[payee_set.provider] += to_provider
        self.balances[payee_set.creator] += to_creator
        to_payees += to_provider + to_creator
    self.balances[treasury] += paid - to_payees
    self.balances[payer] += escrow - paid
    self.escrowed[payer] -= escrow
    refund: uint256 = escrow - paid
    log BatchSettled(batch_ref=batch_ref, payer=payer, first=first, count=count, paid=paid, refund=refund)


# stake ------------------------------------------------------------------------------------

@external
def stake(provider: address, amount: uint256, stake_id: bytes32):
    """@notice Move `amount` of `provider`'s balance into its stake, once per id."""
    self._check_authorized(provider)
    assert stake_id != empty(bytes32), "empty stake id"
    assert not self.stakes[stake_id], "stake id already used"
    assert amount > 0, "nothing to stake"
    assert self.balances[provider] >= amount, "insufficient balance"
    self.stakes[stake_id] = True
    self.balances[provider] -= amount
    self.staked[provider] += amount
    log Staked(stake_id=stake_id, provider=provider, amount=amount)


@external
def report_fraud(fraud_id: bytes32, provider: address, evidence: bytes32):
    """@notice Record proven fraud by `provider` (the digest of its evidence); arbiter only."""
    assert msg.sender == arbiter, "only the arbiter reports fraud"
    assert fraud_id != empty(bytes32), "empty fraud id"
    assert evidence != empty(bytes32), "no evidence"
    assert self.frauds[fraud_id].provider == empty(address), "fraud already reported"
    assert provider != empty(address), "no provider"
    self.frauds[fraud_id] = FraudReport(provider=provider, evidence=evidence, slashed=False)
    log FraudReported(fraud_id=fraud_id, provider=provider, evidence=evidence)


@external
def slash(fraud_id: bytes32, amount: uint256):
    """@notice Move `amount` of the reported provider's stake to the treasury; arbiter only."""
    assert msg.sender == arbiter, "only the arbiter slashes"
    report: FraudReport = self.frauds[fraud_id]
    assert report.provider != empty(address), "no fraud record"
    assert not report.slashed, "already slashed"
    assert amount > 0, "nothing to slash"
    assert self.staked[report.provider] >= amount, "exceeds stake"
    self.frauds[fraud_id].slashed = True
    self.staked[report.provider] -= amount
    self.balances[treasury] += amount
    log Slashed(fraud_id=fraud_id, provider=report.provider, amount=amount)


# views ------------------------------------------------------------------------------------

@view
@external
def job_state(payer: address, index: uint256) -> uint256:
    """@notice A job's record (payee set << 40 | remaining), with bit 64 set once settled."""
    return self._job_state(payer, index)


@view
@external
def job_states(payer: address, first: uint256, count: uint256) -> DynArray[uint256, MAX_BATCH]:
    """@notice `job_state` for jobs `first` .. `first + count - 1`."""
    states: DynArray[uint256, MAX_BATCH] = []
    for k: uint256 in range(count, bound=MAX_BATCH):
        states.append(self._job_state(payer, first + k))
    return states


# internals --------------------------------------------------------------------------------

@internal
def _check_authorized(account: address):
    assert msg.sender == account or self.operators[account][msg.sender], "not authorized"


@internal
def _payee_set(provider: address, creator: address) -> uint256:
    payee_creator: address = creator
    if payee_creator == empty(address):
        payee_creator = treasury
    key: bytes32 = keccak256(abi_encode(provider, payee_creator))
    found: uint256 = self.payee_set_ids[key]
    if found != 0:
        return found
    found = self.payee_set_count + 1
    assert found <= MAX_PAYEE_SETS, "too many payee sets"
    self.payee_set_count = found
    self.payee_set_ids[key] = found
    self.payee_sets[found] = PayeeSet(provider=provider, creator=payee_creator)
    return found


@view
@internal
def _job_state(payer: address, index: uint256) -> uint256:
    record: uint256 = (self.job_slots[payer][index >> 2] >> ((index & 3) << 6)) & RECORD_MASK
    settled: uint256 = (self.settled_words[payer][index >> 8] >> (index & 255)) & 1
    return settled << 64 | record


@view
@internal
def _open_record(payer: address, index: uint256) -> uint256:
    assert index < self.job_count[payer], "no such job"
    assert (self.settled_words[payer][index >> 8] >> (index & 255)) & 1 == 0, "already settled"
    return (self.job_slots[payer][index >> 2] >> ((index & 3) << 6)) & RECORD_MASK


@internal
def _mark_settled(payer: address, index: uint256):
    self.settled_words[payer][index >> 8] |= 1 << (index & 255)


@internal
def _pay(payee_set_id: uint256, amount: uint256):
    if amount == 0:
        return
    payee_set: PayeeSet = self.payee_sets[payee_set_id]
    to_treasury: uint256 = amount * treasury_bps // BPS
    to_creator: uint256 = amount * creator_bps // BPS
    self.balances[payee_set.provider] += amount - to_treasury - to_creator
    self.balances[payee_set.creator] += to_creator
    self.balances[treasury] += to_treasury
