"""Statements, receipts, tree heads and the RFC 9162 tree: what verifies, and that any
changed byte is refused with a reason."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymerkle import InmemoryTree

from tvmm.transparency import keys, merkle
from tvmm.transparency.claims import Claim
from tvmm.transparency.errors import TransparencyError
from tvmm.transparency.heads import sign_head, verify_head
from tvmm.transparency.log import TransparencyLog
from tvmm.transparency.receipts import Inclusion, make_receipt, parse_receipt, verify_receipt
from tvmm.transparency.statements import parse_statement, sign_statement, verify_statement

ISSUER = keys.new_key()
SERVICE = keys.new_key()


def claim(svn: int = 3, feed: str = "tvmm/samples") -> Claim:
    return Claim(bytes(range(48)), "modexp", feed, svn, bytes(32), "snp",
                 {"compiler": "gcc 12", "flags": "-O2"})


@pytest.fixture(scope="module")
def log(tmp_path_factory) -> TransparencyLog:
    log = TransparencyLog(tmp_path_factory.mktemp("log") / "log.db")
    for i in range(37):
        log.append(b"entry %d" % i)
    return log


def test_tree_roots_agree_with_pymerkle_and_rfc9162(log: TransparencyLog) -> None:
    entries = [log.entry(i) for i in range(log.size)]
    tree = InmemoryTree(algorithm="sha256")
    for n, e in enumerate(entries, 1):
        tree.append_entry(e)
        assert log.root(n) == merkle.root_of(entries[:n]) == tree.get_root()


def test_prefix_roots_in_one_pass_are_the_logs_roots(log: TransparencyLog) -> None:
    """The auditor's one-pass roots (every prefix, any order, sizes past the end left
    out) are the log's own roots."""
    entries = [log.entry(i) for i in range(log.size)]
    sizes = [log.size + 3, *range(log.size, -1, -1)]
    roots = merkle.prefix_roots(entries, sizes)
    assert set(roots) == set(range(log.size + 1))
    assert all(roots[n] == log.root(n) for n in range(log.size + 1))


def test_every_inclusion_and_consistency_proof_verifies(log: TransparencyLog) -> None:
    for n in range(1, log.size + 1):
        root = log.root(n)
        for i in range(n):
            proof = log.inclusion(i, n)
            assert merkle.root_from_inclusion(merkle.leaf_hash(log.entry(i)), i, n,
                                              proof.path) == root
        for m in range(1, n + 1):
            merkle.verify_consistency(m, n, log.root(m), root, log.consistency(m, n))


def test_a_fork_is_detected(log: TransparencyLog, tmp_path) -> None:
    other = TransparencyLog(tmp_path / "fork.db")  # same size, one entry different
    for i in range(log.size):
        other.append(b"entry %d" % i if i != 5 else b"rewritten")
    for m in (6, 8, 20):
        with pytest.raises(TransparencyError) as exc:
            merkle.verify_consistency(m, log.size, other.root(m), log.root(),
                                      log.consistency(m, log.size))
        assert exc.value.reason == "fork"
    other.close()


@given(st.integers(1, 300), st.data())
@settings(max_examples=60, deadline=None)
def test_wrong_index_or_size_never_verifies(size: int, data) -> None:
    entries = [b"%d" % i for i in range(size)]
    index = data.draw(st.integers(0, size - 1))
    tree = InmemoryTree(algorithm="sha256")
    for e in entries:
        tree.append_entry(e)
    path = [bytes(p) for p in tree.prove_inclusion(index + 1).path[1:]]
    root = merkle.root_of(entries)
    assert merkle.root_from_inclusion(merkle.leaf_hash(entries[index]), index, size,
                                      path) == root
    other = data.draw(st.integers(0, 2 * size))
    if other != index:
        try:
            assert merkle.root_from_inclusion(merkle.leaf_hash(entries[index]), other, size,
                                              path) != root
        except TransparencyError:
            pass


def test_statement_round_trip_and_issuer_check() -> None:
    raw = sign_statement(claim(), ISSUER)
    assert verify_statement(raw, ISSUER.public_key()).claim == claim()
    assert parse_statement(raw).issuer == keys.key_id(ISSUER.public_key())
    with pytest.raises(TransparencyError) as exc:
        verify_statement(raw, SERVICE.public_key())
    assert exc.value.reason == "key"


def test_receipt_verifies_offline_and_every_changed_byte_is_refused(log) -> None:
    statement = sign_statement(claim(), ISSUER)
    index = log.append(statement)
    receipt = make_receipt(SERVICE, log.inclusion(index), log.root())
    proof = verify_receipt(statement, receipt, SERVICE.public_key())
    assert (proof.index, proof.size) == (index, log.size)
    for blob, which in ((statement, 0), (receipt, 1)):
        for at in range(len(blob)):
            changed = bytearray(blob)
            changed[at] ^= 0x01
            args = [statement, receipt]
            args[which] = bytes(changed)
            with pytest.raises(TransparencyError) as exc:
                verify_receipt(args[0], args[1], SERVICE.public_key())
            assert exc.value.reason in ("malformed", "signature", "proof", "key")


def test_a_tree_head_verifies_and_every_changed_byte_is_refused() -> None:
    raw = sign_head(SERVICE, 7, bytes(32), 1_700_000_000)
    head = verify_head(raw, SERVICE.public_key())
    assert (head.size, head.root, head.time) == (7, bytes(32), 1_700_000_000)
    for at in range(len(raw)):
        changed = bytearray(raw)
        changed[at] ^= 0x80
        with pytest.raises(TransparencyError):
            verify_head(bytes(changed), SERVICE.public_key())


def test_claims_are_strict() -> None:
    for bad in (dict(svn=-1), dict(svn=True), dict(name=""), dict(launch_digest=b"x")):
        fields = {**claim().__dict__, **bad}
        with pytest.raises(TransparencyError):
            Claim(**fields)
    import cbor2
    data = claim().to_cbor()
    document = cbor2.loads(data)
    with pytest.raises(TransparencyError):
        Claim.from_cbor(cbor2.dumps({**document, "extra": 1}, canonical=True))
    with pytest.raises(TransparencyError):  # the same map, not in deterministic encoding
        Claim.from_cbor(cbor2.dumps(dict(reversed(list(document.items())))))


@given(st.binary(max_size=400))
@settings(max_examples=300, deadline=None)
def test_parsers_raise_only_their_error(data: bytes) -> None:
    for parse in (Claim.from_cbor, parse_statement, parse_receipt,
                  lambda d: verify_head(d, SERVICE.public_key())):
        try:
            parse(data)
        except TransparencyError:
            pass


def test_a_receipt_for_another_entry_is_refused(log) -> None:
    statement = sign_statement(claim(svn=4), ISSUER)
    receipt = make_receipt(SERVICE, log.inclusion(0), log.root())
    with pytest.raises(TransparencyError):
        verify_receipt(statement, receipt, SERVICE.public_key())
    bogus = make_receipt(SERVICE, Inclusion(log.size, 0, []), log.root())
    with pytest.raises(TransparencyError):
        verify_receipt(log.entry(0), bogus, SERVICE.public_key())


def test_an_independent_cose_implementation_verifies_ours() -> None:
    """pycose (its own CBOR handling and ECDSA) checks our statement and receipt: the
    format is COSE_Sign1 as RFC 9052 has it, not only as we read it."""
    pycose = pytest.importorskip("pycose.messages")
    from pycose.keys import CoseKey

    public = CoseKey.from_pem_public_key(keys.public_pem(ISSUER.public_key()).decode())
    message = pycose.CoseMessage.decode(sign_statement(claim(), ISSUER))
    message.key = public
    assert message.verify_signature()
    assert Claim.from_cbor(message.payload) == claim()
    entries = [b"a", b"b", sign_statement(claim(), ISSUER)]
    root = merkle.root_of(entries)
    receipt = pycose.CoseMessage.decode(make_receipt(SERVICE, Inclusion(3, 2, [
        merkle.node_hash(merkle.leaf_hash(b"a"), merkle.leaf_hash(b"b"))]), root))
    receipt.key = CoseKey.from_pem_public_key(keys.public_pem(SERVICE.public_key()).decode())
    assert receipt.verify_signature(detached_payload=root)
    assert not receipt.verify_signature(detached_payload=bytes(32))
