"""The perimeter at rest: what the operator's disk holds of the coordinator's state.

Nothing secret (no checkpoint key, no private key) is in any file the operator can read;
an older copy of the coordinator's database is refused and audited; an edited or a
truncated audit log is reported by ``tvmm perimeter status``."""

from __future__ import annotations

import base64
import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tvmm.cli import main as cli
from tvmm.hw.root_of_trust import Chip, CounterError, Manufacturer
from tvmm.operator.client import OperatorClient
from tvmm.perimeter.coordinator import Coordinator
from tvmm.perimeter.identity import Identity, pinned_ark
from tvmm.perimeter.node import Node
from tvmm.perimeter.store import Problem
from tvmm.samples import build_sample

# The modeled vendor (its ARK/ASK keys stand for AMD's signing facility, which no operator
# holds; the model keeps them here so that one machine can issue VCEKs) and the transport
# CA (it proves nothing: trust comes from the attestation report) are no part of what the
# perimeter keeps at rest.
NOT_AT_REST = ("root_of_trust", "perimeter_ca")


def _files(state: Path) -> list[Path]:
    return [p for p in state.rglob("*") if p.is_file()
            and p.relative_to(state).parts[0] not in NOT_AT_REST]


def _looks_like_private_key(data: bytes) -> bool:
    if b"PRIVATE KEY" in data:
        return True
    try:
        serialization.load_der_private_key(data, password=None)
    except (ValueError, TypeError):
        return False
    return True


def _scalar(pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(pem, None)
    value = key.private_numbers().private_value  # type: ignore[union-attr]
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def _forms(secret: bytes) -> list[bytes]:
    return [secret, secret.hex().encode(), secret.hex().upper().encode(),
            base64.b64encode(secret)]


def test_no_secret_is_at_rest(tmp_path: Path) -> None:
    state = tmp_path / "state"
    ark = pinned_ark(state)
    cident = Identity.create("c", "coordinator", state)
    (state / "perimeter").mkdir()
    coord = Coordinator(state / "perimeter" / "coordinator.db", cident, ark).start()
    nident = Identity.create("n1", "node", state)
    node = Node("n1", nident, ark, storage=state / "storage" / "n1").start()
    keys: list[bytes] = []
    suspend = node.suspend

    def seen(msg):  # the checkpoint key as the node's agent receives it
        keys.append(bytes.fromhex(msg["key"]))
        return suspend(msg)

    node.suspend = seen  # type: ignore[method-assign]
    try:
        (state / "storage" / "n1").mkdir(parents=True, exist_ok=True)
        node.register(coord.address)
        op = OperatorClient(coord.address, state)
        vm = op.launch(build_sample("counter").path.read_bytes(), "counter", "n1", "shim",
                       4 << 20, (10**9).to_bytes(8, "little"))
        op.suspend(vm)
        (key,) = keys
        assert list((state / "storage" / "n1").glob("*.ckpt"))  # the host stored it
    finally:
        node.close()
        coord.close()
    secrets = {"checkpoint key": key, "coordinator TLS key": _scalar(cident.key_pem),
               "node TLS key": _scalar(nident.key_pem)}
    for ident in (cident, nident):
        secrets[f"VCEK of {ident.chip.name}"] = _scalar(ident.chip.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
    files = _files(state)
    for path in files:
        data = path.read_bytes()
        assert not _looks_like_private_key(data), path
        for what, secret in secrets.items():
            assert not any(form in data for form in _forms(secret)), (what, path)
    assert {"coordinator.db", "fuse", "vcek_key.sealed"} <= {p.name for p in files}


def _copy_db(src: Path, dst: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        s, d = Path(f"{src}{suffix}"), Path(f"{dst}{suffix}")
        d.unlink(missing_ok=True)
        if s.exists():
            shutil.copyfile(s, d)


def test_an_older_database_is_refused_and_audited(tmp_path: Path) -> None:
    state = tmp_path / "state"
    ark = pinned_ark(state)
    ident = Identity.create("c", "coordinator", state)
    db, old, new = tmp_path / "c.db", tmp_path / "old.db", tmp_path / "new.db"
    coord = Coordinator(db, ident, ark)
    coord.store.log("first")
    coord.close()
    _copy_db(db, old)
    coord = Coordinator(db, ident, ark)
    coord.store.log("second")  # a later decision: the copy is now older
    coord.close()
    _copy_db(db, new)
    _copy_db(old, db)  # the operator restores the older database
    coord = Coordinator(db, ident, ark).start()
    try:
        assert coord.refusal is not None and coord.refusal.reason == Problem.ROLLBACK
        op = OperatorClient(coord.address, state)
        answer = op.request("suspend", vm="counter-1")
        assert not answer["ok"] and answer["reason"] == Problem.ROLLBACK.value
        assert op.audit()["problems"][0].startswith(f"{Problem.ROLLBACK}:")
    finally:
        coord.close()
    _copy_db(new, db)  # the newest database is back: it opens, and shows the refusal
    coord = Coordinator(db, ident, ark)
    try:
        assert coord.refusal is None
        events = [(r["event"], r["detail"].get("count")) for r in coord.store.audit_records()]
        assert events[-1] == ("state_refused", 1)
        assert [e for e, _ in events].count("second") == 1
        assert coord.store.check() == []
    finally:
        coord.close()


@pytest.mark.parametrize("tamper", ["edit", "truncate"])
def test_perimeter_status_reports_a_tampered_audit_log(
        tmp_path: Path, capsys: pytest.CaptureFixture, tamper: str) -> None:
    state = tmp_path / "state"
    ark = pinned_ark(state)
    db = tmp_path / "c.db"
    coord = Coordinator(db, Identity.create("c", "coordinator", state), ark).start()
    try:
        for i in range(4):
            coord.store.log("decision", n=i)
        status = ["perimeter", "status", "--state-dir", str(state), "--json",
                  "--coordinator", f"{coord.address[0]}:{coord.address[1]}"]
        assert cli(status) == 0
        assert json.loads(capsys.readouterr().out)["problems"] == []
        with sqlite3.connect(db) as raw:  # the operator edits the file under it
            if tamper == "edit":
                raw.execute("UPDATE audit SET detail = ? WHERE seq = 2", ('{"n": 7}',))
            else:
                raw.execute("DELETE FROM audit WHERE seq > 2")
        assert cli(status) == 0
        problems = json.loads(capsys.readouterr().out)["problems"]
        kind = Problem.AUDIT_ALTERED if tamper == "edit" else Problem.AUDIT_TRUNCATED
        assert any(p.startswith(f"{kind}:") for p in problems), problems
        if tamper == "truncate":  # the audit head is sealed: no decision is taken on it
            answer = OperatorClient(coord.address, state).request(
                "launch", guest="counter", node="n9", level="shim", memory=4 << 20,
                secret="")
            assert answer["reason"] == Problem.TAMPERED.value
    finally:
        coord.close()


def test_the_chip_seals_to_a_measurement_and_counts(tmp_path: Path) -> None:
    maker = Manufacturer.load_or_create(tmp_path)
    a, b = (Chip.load_or_create(tmp_path, maker, n) for n in ("chip-a", "chip-b"))
    m1, m2 = bytes(48), b"\x01" * 48
    assert a.sealing_key(m1, "x") == Chip.load_or_create(tmp_path, maker, "chip-a") \
        .sealing_key(m1, "x")  # stable across loads
    assert len({a.sealing_key(m1, "x"), a.sealing_key(m2, "x"), a.sealing_key(m1, "y"),
                b.sealing_key(m1, "x")}) == 4  # other code, purpose or chip: another key
    name = a.new_counter()
    counter = a.counter(name)
    assert counter.read() == 0 and counter.increment() == 1 and counter.increment() == 2
    assert Chip.load_or_create(tmp_path, maker, "chip-a").counter(name).read() == 2
    with pytest.raises(CounterError):
        b.counter(name).read()  # another chip's counter is not here
    with pytest.raises(ValueError):
        a.counter("../escape")


def test_a_chip_kept_in_clear_is_wrapped_at_first_load(tmp_path: Path) -> None:
    maker = Manufacturer.load_or_create(tmp_path)
    chip = Chip.load_or_create(tmp_path, maker, "old")
    assert chip.home is not None
    (chip.home / "vcek_key.pem").write_bytes(chip.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))  # as a chip was stored before
    (chip.home / "vcek_key.sealed").unlink()
    again = Chip.load_or_create(tmp_path, maker, "old")
    assert again.chip_id == chip.chip_id
    assert not (chip.home / "vcek_key.pem").exists()
    assert not any(_looks_like_private_key(p.read_bytes()) for p in chip.home.rglob("*")
                   if p.is_file())
