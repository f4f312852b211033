"""Key slots (store/keys.py), their use cases (ops/keys.py) and `snapkit key` (cli/key_cmd.py).

Slots are tested on both MemoryBackend and LocalBackend. The use cases run
against a small stand-in project (a backend and a key source), so they do not
depend on the rest of the store; one test runs the real CLI end to end. All
scrypt runs use the cheap test cost (conftest.py).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import stat
import time
from pathlib import Path

import pytest

from snapkit.backends.local import LocalBackend
from snapkit.backends.memory import MemoryBackend
from snapkit.errors import AmbiguousRef, IntegrityError, KeyAccessError, RefNotFound, SnapkitError
from snapkit.ops import keys as ops
from snapkit.store import crypto, keys


@pytest.fixture(params=["memory", "local"])
def backend(request, tmp_path):
    if request.param == "memory":
        return MemoryBackend()
    return LocalBackend.create(tmp_path / "store")


@pytest.fixture
def slot_store(backend, tmp_path):
    master = crypto.random_key()
    key_path = tmp_path / "cfg" / "store.key"
    secret = keys.write_key_file(key_path)
    kf_slot = keys.add_slot(backend, master, "keyfile", secret)
    pw_slot = keys.add_slot(backend, master, "passphrase", "correct horse")
    return backend, master, key_path, kf_slot, pw_slot


def _slot(be, slot_id: str) -> dict:
    return json.loads(be.get(f"keys/{slot_id}.json"))


def _forge(be, slot_id: str, **changes) -> None:
    """Rewrite a slot with `changes` and a matching checksum: what an attacker can do."""
    slot = {**_slot(be, slot_id), **changes}
    body = {k: v for k, v in slot.items() if k != "checksum"}
    slot["checksum"] = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    be.put(f"keys/{slot_id}.json", json.dumps(slot).encode())


def _damage_wrapped(be, slot_id: str) -> None:
    slot = _slot(be, slot_id)
    w = slot["wrapped"]
    mid = len(w) // 2
    slot["wrapped"] = w[:mid] + ("A" if w[mid] != "A" else "B") + w[mid + 1 :]
    be.put(f"keys/{slot_id}.json", json.dumps(slot, indent=1).encode())


def _damaged_ids(be) -> list[str]:
    return [s.id for s in keys.list_slots(be) if s.damaged]


# ---------------------------------------------------------------------------- slots


def test_key_file_and_passphrase_slots_open_the_same_master(slot_store):
    be, master, key_path, kf_slot, pw_slot = slot_store
    assert keys.open_master(be, keys.KeySource(key_file=key_path)) == master
    assert keys.open_master(be, keys.KeySource(passphrase="correct horse")) == master
    assert keys.open_master(be, keys.KeySource(key_file=key_path, passphrase="wrong")) == master
    assert keys.open_master_slot(be, keys.KeySource(key_file=key_path)) == (master, kf_slot)
    assert keys.open_master_slot(be, keys.KeySource(passphrase="correct horse")) == (master, pw_slot)
    # The key file is private, and the slots do not hold the master or the passphrase in clear.
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_path.parent.stat().st_mode) == 0o700
    for info in be.list("keys"):
        data = be.get(info.name)
        assert master.hex() not in data.decode() and b"correct horse" not in data
        assert master not in data


def test_slots_are_format_2_with_a_utc_creation_time(slot_store):
    be, _master, _key_path, kf_slot, pw_slot = slot_store
    for slot_id, kind in ((kf_slot, "keyfile"), (pw_slot, "passphrase")):
        slot = _slot(be, slot_id)
        assert set(slot) == {"format", "id", "kind", "created", "kdf", "salt", "wrapped", "checksum"}
        assert (slot["format"], slot["id"], slot["kind"]) == (2, slot_id, kind)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", slot["created"])
    infos = {s.id: s for s in keys.list_slots(be)}
    assert infos[kf_slot].kdf == "hkdf-sha256" and infos[pw_slot].kdf == "scrypt n=2^10 r=8 p=1"
    assert not any(s.damaged for s in infos.values())


def test_wrong_passphrase_or_key_file_is_a_key_access_error(slot_store, tmp_path):
    be, _master, _key_path, _k, _p = slot_store
    with pytest.raises(KeyAccessError) as exc:
        keys.open_master(be, keys.KeySource(passphrase="wrong horse"))
    assert exc.value.exit_code == 1 and "wrong passphrase" in exc.value.message
    assert "wrong horse" not in exc.value.message
    other = tmp_path / "other.key"
    keys.write_key_file(other)
    with pytest.raises(KeyAccessError, match="wrong key file"):
        keys.open_master(be, keys.KeySource(key_file=other))
    with pytest.raises(KeyAccessError, match="wrong key file and passphrase"):
        keys.open_master(be, keys.KeySource(key_file=other, passphrase="wrong horse"))
    with pytest.raises(KeyAccessError):
        keys.open_master(be, keys.KeySource())
    with pytest.raises(KeyAccessError):
        keys.open_master(be, keys.KeySource(key_file=tmp_path / "missing.key"))


def test_damaged_slot_is_an_integrity_error_not_a_wrong_key(slot_store):
    be, master, key_path, kf_slot, pw_slot = slot_store
    _damage_wrapped(be, kf_slot)
    assert _damaged_ids(be) == [kf_slot]
    # The passphrase slot is intact and still opens the store.
    assert keys.open_master(be, keys.KeySource(passphrase="correct horse")) == master
    # Only the damaged slot could open it for a key file: integrity problem (exit 3), naming the slot.
    with pytest.raises(IntegrityError) as exc:
        keys.open_master(be, keys.KeySource(key_file=key_path))
    assert kf_slot in exc.value.message and exc.value.exit_code == 3
    _damage_wrapped(be, pw_slot)
    with pytest.raises(IntegrityError) as exc:
        keys.open_master(be, keys.KeySource(passphrase="correct horse"))
    assert pw_slot in exc.value.message and "wrong" not in exc.value.message.lower()


def test_slot_with_invalid_json_is_damaged(slot_store):
    be, master, key_path, _kf_slot, pw_slot = slot_store
    be.put(f"keys/{pw_slot}.json", b'{"format": 1, "id": ')
    assert _damaged_ids(be) == [pw_slot]
    assert keys.open_master(be, keys.KeySource(key_file=key_path)) == master


def test_wrong_passphrase_with_a_damaged_spare_slot_is_a_wrong_key_not_damage(slot_store):
    be, master, _key_path, kf_slot, _pw_slot = slot_store
    spare = keys.add_slot(be, master, "passphrase", "spare horse")
    _damage_wrapped(be, spare)
    _damage_wrapped(be, kf_slot)
    with pytest.raises(KeyAccessError) as exc:
        keys.open_master(be, keys.KeySource(passphrase="wrong horse"))
    assert exc.value.exit_code == 1 and "wrong passphrase" in exc.value.message
    assert spare in exc.value.hint and kf_slot in exc.value.hint  # damaged slots are mentioned
    assert keys.open_master(be, keys.KeySource(passphrase="correct horse")) == master


def test_all_slots_damaged_is_an_integrity_error(slot_store):
    be, _master, key_path, kf_slot, pw_slot = slot_store
    _damage_wrapped(be, kf_slot)
    be.put(f"keys/{pw_slot}.json", b"\x00garbage")
    for source in (keys.KeySource(key_file=key_path), keys.KeySource(passphrase="correct horse"),
                   keys.KeySource(key_file=key_path, passphrase="correct horse")):
        with pytest.raises(IntegrityError, match="key slot damaged") as exc:
            keys.open_master(be, source)
        assert exc.value.exit_code == 3


def test_a_store_without_slots_is_an_integrity_error(backend, tmp_path):
    path = tmp_path / "k.key"
    keys.write_key_file(path)
    with pytest.raises(IntegrityError, match="no key slots"):
        keys.open_master(backend, keys.KeySource(key_file=path))


def test_a_secret_of_a_kind_the_store_lacks_is_a_key_access_error(backend, tmp_path):
    keys.add_slot(backend, crypto.random_key(), "passphrase", "pw")
    path = tmp_path / "k.key"
    keys.write_key_file(path)
    with pytest.raises(KeyAccessError, match="no key file slot") as exc:
        keys.open_master(backend, keys.KeySource(key_file=path))
    assert exc.value.exit_code == 1


def test_format_1_slot_still_opens(backend, tmp_path):
    master = crypto.random_key()
    key_path = tmp_path / "old.key"
    secret = keys.write_key_file(key_path)
    slot_id, salt = "0123456789abcdef", b"s" * 16
    kek = crypto.kek_from_keyfile(secret, salt)
    slot = {"format": 1, "id": slot_id, "kind": "keyfile", "kdf": {"name": "hkdf-sha256"},
            "salt": base64.b64encode(salt).decode(),
            "wrapped": base64.b64encode(crypto.wrap(kek, master, f"snapkit key slot {slot_id}".encode())).decode()}
    body = json.dumps(slot, sort_keys=True).encode()
    slot["checksum"] = hashlib.sha256(body).hexdigest()
    backend.put(f"keys/{slot_id}.json", json.dumps(slot, indent=1).encode())
    assert keys.open_master_slot(backend, keys.KeySource(key_file=key_path)) == (master, slot_id)
    [info] = keys.list_slots(backend)
    assert (info.id, info.kind, info.created, info.damaged) == (slot_id, "keyfile", None, False)


CRAFTED = {
    "huge n": {"kdf": {"name": "scrypt", "n": 2**40, "r": 8, "p": 1}},
    "huge r": {"kdf": {"name": "scrypt", "n": 2**10, "r": 10**6, "p": 1}},
    "huge p": {"kdf": {"name": "scrypt", "n": 2**10, "r": 8, "p": 10**6}},
    "n not a power of two": {"kdf": {"name": "scrypt", "n": 3 * 2**10, "r": 8, "p": 1}},
    "n too small": {"kdf": {"name": "scrypt", "n": 2**4, "r": 8, "p": 1}},
    "over 1 GiB": {"kdf": {"name": "scrypt", "n": 2**20, "r": 16, "p": 1}},
    "r not an int": {"kdf": {"name": "scrypt", "n": 2**10, "r": True, "p": 1}},
    "n a string": {"kdf": {"name": "scrypt", "n": "1024", "r": 8, "p": 1}},
    "unknown kdf": {"kdf": {"name": "argon2id", "n": 2**10, "r": 8, "p": 1}},
    "salt too short": {"salt": base64.b64encode(b"x" * 8).decode()},
    "salt too long": {"salt": base64.b64encode(b"x" * 65).decode()},
    "salt not base64": {"salt": "!!not base64!!"},
    "unknown format": {"format": 3},
    "unknown kind": {"kind": "yubikey"},
    "id of another slot": {"id": "ffffffffffffffff"},
}


@pytest.mark.parametrize("changes", CRAFTED.values(), ids=CRAFTED.keys())
def test_crafted_passphrase_slot_is_damaged_and_never_run(slot_store, monkeypatch, changes):
    be, master, key_path, _kf_slot, pw_slot = slot_store
    start = time.monotonic()
    _forge(be, pw_slot, **changes)

    def no_scrypt(*a, **kw):
        raise AssertionError("scrypt ran on a slot outside the bounds")

    monkeypatch.setattr(crypto, "kek_from_passphrase", no_scrypt)
    [info] = [s for s in keys.list_slots(be) if s.id == pw_slot]
    assert info.damaged and info.problem
    with pytest.raises(IntegrityError) as exc:
        keys.open_master(be, keys.KeySource(passphrase="correct horse"))
    assert pw_slot in exc.value.message
    assert keys.open_master(be, keys.KeySource(key_file=key_path, passphrase="correct horse")) == master
    assert time.monotonic() - start < 1.0


def test_keyfile_slot_must_name_hkdf(slot_store):
    be, _master, key_path, kf_slot, _pw = slot_store
    _forge(be, kf_slot, kdf={"name": "scrypt", "n": 2**10, "r": 8, "p": 1})
    assert _damaged_ids(be) == [kf_slot]
    with pytest.raises(IntegrityError):
        keys.open_master(be, keys.KeySource(key_file=key_path))


def test_bounds_at_the_edges_are_accepted(slot_store):
    be, _master, _key_path, _kf, pw_slot = slot_store
    # 128·n·r·p = 1 GiB exactly is allowed (not run here: listing only validates).
    _forge(be, pw_slot, kdf={"name": "scrypt", "n": 2**20, "r": 8, "p": 1},
           salt=base64.b64encode(b"y" * 64).decode())
    assert _damaged_ids(be) == []


def test_remove_slot_and_list(slot_store):
    be, _master, _key_path, kf_slot, pw_slot = slot_store
    keys.remove_slot(be, pw_slot)
    keys.remove_slot(be, pw_slot)  # idempotent
    assert [s.id for s in keys.list_slots(be)] == [kf_slot]
    with pytest.raises(SnapkitError):
        keys.remove_slot(be, "../config")


# ---------------------------------------------------------------------------- use cases


class FakeStore:
    def __init__(self, backend):
        self.backend, self.id = backend, "0011223344556677"


class FakeProject:
    """What ops/keys.py uses of a Project: the store's backend and id, the key source, the root."""

    def __init__(self, backend, root: Path, key_file: Path | None = None, passphrase: str | None = None):
        self.store, self.root = FakeStore(backend), root
        self.key_file, self.passphrase = key_file, passphrase

    def key_source(self) -> keys.KeySource:
        return keys.KeySource(key_file=self.key_file, passphrase=self.passphrase)


@pytest.fixture
def kf_project(tmp_path):
    """A store with one key file slot; the project opens it with that key file."""
    be = MemoryBackend()
    master = crypto.random_key()
    key_path = tmp_path / "home" / ".config" / "snapkit" / "keys" / "store.key"
    slot = keys.add_slot(be, master, "keyfile", keys.write_key_file(key_path))
    root = tmp_path / "repo"
    root.mkdir()
    return FakeProject(be, root, key_file=key_path), master, slot


def _opens(project, **source) -> bytes:
    return keys.open_master(project.store.backend, keys.KeySource(**source))


def test_list_keys_needs_no_key(kf_project):
    project, _master, slot = kf_project
    project.key_file = None
    result = ops.list_keys(project)
    assert [(s.id, s.kind, s.damaged) for s in result.slots] == [(slot, "keyfile", False)]
    as_json = result.as_json()
    assert as_json["schema"] == 1 and as_json["slots"][0]["kdf"] == "hkdf-sha256"


def test_add_passphrase_and_key_file(kf_project, tmp_path):
    project, master, _slot = kf_project
    added = ops.add_key(project, "passphrase", passphrase="new horse")
    assert added.added and added.kind == "passphrase" and _opens(project, passphrase="new horse") == master
    path = tmp_path / "backup" / "deep" / "second.key"
    added = ops.add_key(project, "keyfile", key_file=path)
    assert added.created_key_file and added.key_file == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o700
    assert keys.open_master_slot(project.store.backend, keys.KeySource(key_file=path)) == (master, added.slot_id)
    # The same key file again: reused, nothing added.
    again = ops.add_key(project, "keyfile", key_file=path)
    assert not again.added and again.slot_id == added.slot_id and len(ops.list_keys(project).slots) == 3


def test_add_key_file_reuses_a_key_file_and_never_overwrites_another_file(kf_project, tmp_path):
    project, master, _slot = kf_project
    existing = tmp_path / "existing.key"
    secret = keys.write_key_file(existing)
    before = existing.read_bytes()
    added = ops.add_key(project, "keyfile", key_file=existing)
    assert added.added and not added.created_key_file and existing.read_bytes() == before
    assert keys.read_key_file(existing) == secret and _opens(project, key_file=existing) == master
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    with pytest.raises(KeyAccessError, match="refusing to overwrite"):
        ops.add_key(project, "keyfile", key_file=notes)
    assert notes.read_text() == "my notes\n" and len(ops.list_keys(project).slots) == 2


def test_add_and_remove_need_the_current_key(kf_project, tmp_path):
    project, _master, slot = kf_project
    project.key_file = tmp_path / "missing.key"
    with pytest.raises(KeyAccessError):
        ops.add_key(project, "passphrase", passphrase="sneaky")
    with pytest.raises(KeyAccessError):
        ops.remove_key(project, slot)
    with pytest.raises(KeyAccessError):
        ops.rotate_key(project)
    assert [s.id for s in ops.list_keys(project).slots] == [slot]


def test_remove_refuses_the_last_slot_and_resolves_prefixes(kf_project, tmp_path):
    project, master, first = kf_project
    with pytest.raises(SnapkitError, match="last intact slot") as exc:
        ops.remove_key(project, first[:6])
    assert exc.value.exit_code == 1 and exc.value.hint
    # Add key file slots until two ids share a first character (at most 16 more).
    ids = [first]
    while len({i[0] for i in ids}) == len(ids):
        ids.append(ops.add_key(project, "keyfile", key_file=tmp_path / f"k{len(ids)}.key").slot_id)
    twins = [i for i in ids if i[0] == ids[-1][0]]
    with pytest.raises(AmbiguousRef) as exc:
        ops.remove_key(project, ids[-1][0])
    assert all(t in exc.value.message for t in twins)
    with pytest.raises(RefNotFound):
        ops.remove_key(project, "zz")
    removed = ops.remove_key(project, ids[-1])
    assert removed.slot_id == ids[-1] and removed.kind == "keyfile" and not removed.warnings
    assert ids[-1] not in [s.id for s in ops.list_keys(project).slots]
    assert _opens(project, key_file=project.key_file) == master


def test_remove_warns_when_the_opening_key_no_longer_opens(kf_project):
    project, master, first = kf_project
    ops.add_key(project, "passphrase", passphrase="pw")
    result = ops.remove_key(project, first)
    assert result.warnings and "no longer opens" in result.warnings[0]
    assert _opens(project, passphrase="pw") == master


def test_a_damaged_slot_can_be_removed_even_beside_the_last_intact_one(kf_project):
    project, _master, first = kf_project
    be = project.store.backend
    be.put("keys/deadbeefdeadbeef.json", b"not json")
    result = ops.remove_key(project, "deadbeef")
    assert result.damaged and result.kind is None
    assert [s.id for s in ops.list_keys(project).slots] == [first]


def test_rotate_key_file(kf_project, tmp_path):
    project, master, old_slot = kf_project
    key_path = project.key_file
    old_copy = tmp_path / "old-copy.key"
    old_copy.write_bytes(key_path.read_bytes())
    result = ops.rotate_key(project)
    assert (result.kind, result.old_slot_id, result.removed) == ("keyfile", old_slot, (old_slot,))
    assert result.key_file == str(key_path.resolve()) and result.new_slot_id != old_slot
    assert "master key" in result.does_not and "snapkit copy" in result.does_not
    with pytest.raises(KeyAccessError) as exc:
        _opens(project, key_file=old_copy)
    assert exc.value.exit_code == 1
    assert keys.open_master_slot(project.store.backend, keys.KeySource(key_file=key_path)) == (
        master, result.new_slot_id)
    assert [s.kind for s in ops.list_keys(project).slots] == ["keyfile"]
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert sorted(p.name for p in key_path.parent.iterdir()) == [key_path.name]  # no temp file left


@pytest.mark.parametrize("crash_at", ["replace", "remove"])
def test_rotate_key_file_crash_leaves_a_key_that_opens(kf_project, monkeypatch, crash_at):
    project, master, old_slot = kf_project

    def crash(*a, **kw):
        raise KeyboardInterrupt  # stands in for a crash: not caught as an ordinary error

    if crash_at == "replace":
        monkeypatch.setattr(ops.os, "replace", crash)
    else:
        monkeypatch.setattr(keys, "remove_slot", crash)
    with pytest.raises(KeyboardInterrupt):
        ops.rotate_key(project)
    monkeypatch.undo()
    assert _opens(project, key_file=project.key_file) == master
    leftovers = [p.name for p in project.key_file.parent.iterdir() if p != project.key_file]
    assert leftovers == []
    if crash_at == "replace":  # the new slot nothing on disk opens was taken back
        assert [s.id for s in ops.list_keys(project).slots] == [old_slot]


def test_rotate_passphrase(tmp_path):
    be = MemoryBackend()
    master = crypto.random_key()
    old_slot = keys.add_slot(be, master, "passphrase", "old horse")
    project = FakeProject(be, tmp_path, passphrase="old horse")
    with pytest.raises(KeyAccessError, match="new passphrase"):
        ops.rotate_key(project)
    asked = []
    result = ops.rotate_key(project, new_passphrase=lambda: asked.append(1) or "new horse")
    assert asked == [1] and result.kind == "passphrase" and result.removed == (old_slot,)
    with pytest.raises(KeyAccessError) as exc:
        _opens(project, passphrase="old horse")
    assert exc.value.exit_code == 1
    assert keys.open_master_slot(be, keys.KeySource(passphrase="new horse")) == (master, result.new_slot_id)
    assert [s.kind for s in ops.list_keys(project).slots] == ["passphrase"]


def test_rotate_of_a_key_file_slot_does_not_ask_for_a_passphrase(kf_project):
    project, _master, _slot = kf_project
    result = ops.rotate_key(project, new_passphrase=lambda: pytest.fail("asked for a passphrase"))
    assert result.kind == "keyfile"


# ---------------------------------------------------------------------------- CLI


def test_cli_key_round_trip(project, cli, tmp_path):
    listed = json.loads(cli("key", "list", "--json").stdout)
    [first] = listed["slots"]
    assert first["kind"] == "keyfile" and not first["damaged"]
    backup = tmp_path / "backup" / "second.key"
    added = json.loads(cli("key", "add", "--key-file", str(backup), "--json").stdout)
    assert added["created_key_file"] and backup.exists()
    assert cli("key", "add", ok=False).returncode == 2  # neither --passphrase nor --key-file
    proc = cli("key", "add", "--passphrase", ok=False)  # no SNAPKIT_NEW_PASSPHRASE, no terminal
    assert proc.returncode == 1 and "passphrase" in proc.stderr
    rotated = json.loads(cli("key", "rotate", "--json").stdout)
    assert rotated["old_slot_id"] == first["id"] and "master key" in rotated["does_not"]
    human = cli("key", "list").stdout
    assert rotated["new_slot_id"] in human and added["slot_id"] in human and first["id"] not in human
    cli("key", "remove", added["slot_id"][:8])
    proc = cli("key", "remove", rotated["new_slot_id"], ok=False)
    assert proc.returncode == 1 and "last intact slot" in proc.stderr and "Traceback" not in proc.stderr
    assert [s["id"] for s in json.loads(cli("key", "list", "--json").stdout)["slots"]] == [rotated["new_slot_id"]]


def test_read_slots_names_damaged_slot_objects(slot_store):
    be, _master, _key_path, kf_slot, pw_slot = slot_store
    _damage_wrapped(be, kf_slot)
    intact, damaged = keys.read_slots(be)
    assert [s.id for s in intact] == [pw_slot] and damaged == [f"keys/{kf_slot}.json"]
