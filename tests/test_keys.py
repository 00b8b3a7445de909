"""CURVE keypairs: ``loom keys new|show|list`` and the Loom home's own keys (real files,
real ZeroMQ CURVE handshakes with them)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
import zmq
from conftest import LOOM

from loom.errors import KeyFileError
from loom.keys import key_dir, list_keys, load_keypair, local_keys, loom_home, new_keypair


def loom_keys(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LOOM_HOME": str(home)}
    return subprocess.run(
        [*LOOM, "keys", *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_writes_a_private_pair_into_the_loom_home(tmp_path: Path) -> None:
    """`loom keys new` prints the public key and writes NAME.key (0644) and
    NAME.key_secret (0600) into $LOOM_HOME/keys (0700); show and list find it."""
    home = tmp_path / "home"
    made = loom_keys(home, "new", "laptop")
    assert made.returncode == 0, made.stderr
    public = made.stdout.strip()
    assert len(public) == 40
    keys = home / "keys"
    assert mode(keys) == 0o700
    assert mode(keys / "laptop.key_secret") == 0o600
    assert mode(keys / "laptop.key") == 0o644
    assert not [p for p in keys.iterdir() if p.name.startswith(".new-")]  # staging gone
    assert loom_keys(home, "show", "laptop").stdout.strip() == public
    shown = json.loads(loom_keys(home, "show", "laptop", "--json").stdout)
    assert shown == {
        "name": "laptop",
        "public": public,
        "secret": True,
        "file": str(keys / "laptop.key_secret"),
    }
    listed = json.loads(loom_keys(home, "list", "--json").stdout)
    assert [entry["name"] for entry in listed] == ["laptop"]
    assert "secret-key" not in loom_keys(home, "show", "laptop").stdout  # never printed


def test_new_refuses_to_replace_a_key_unless_forced(tmp_path: Path) -> None:
    first = loom_keys(tmp_path, "new", "ci", "--dir", str(tmp_path / "k"))
    again = loom_keys(tmp_path, "new", "ci", "--dir", str(tmp_path / "k"))
    assert again.returncode == 1 and "exists" in again.stderr
    forced = loom_keys(tmp_path, "new", "ci", "--dir", str(tmp_path / "k"), "--force")
    assert forced.returncode == 0 and forced.stdout != first.stdout


@pytest.mark.parametrize("name", ["../escape", "a/b", "", ".hidden", "x" * 65])
def test_a_bad_name_is_refused(tmp_path: Path, name: str) -> None:
    done = loom_keys(tmp_path, "new", name, "--dir", str(tmp_path / "k"))
    assert done.returncode != 0
    assert not (tmp_path / "escape.key_secret").exists()


def test_a_secret_others_can_read_is_refused(tmp_path: Path) -> None:
    """A secret key file with group or world bits is not used; the message says chmod."""
    pair = new_keypair("shared", tmp_path)
    os.chmod(pair.path, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_keypair(pair.path)
    done = loom_keys(tmp_path, "show", "shared", "--dir", str(tmp_path))
    assert done.returncode == 1 and "chmod 600" in done.stderr


def test_a_keys_directory_others_can_enter_is_refused(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o755)
    os.chmod(keys, 0o755)
    with pytest.raises(KeyFileError, match="chmod 700"):
        key_dir(tmp_path)


def test_a_file_that_is_not_a_key_is_refused(tmp_path: Path) -> None:
    (tmp_path / "junk.key").write_text("not a certificate\n")
    with pytest.raises(KeyFileError):
        load_keypair(tmp_path / "junk.key")
    assert list_keys(tmp_path) == []  # a public file that is not a key is skipped


def test_the_home_follows_loom_home_then_xdg(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LOOM_HOME", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert loom_home() == tmp_path / "data" / "loom"
    monkeypatch.setenv("LOOM_HOME", str(tmp_path / "mine"))
    assert loom_home() == tmp_path / "mine"


def test_local_keys_are_made_once_and_complete_a_curve_handshake(tmp_path: Path) -> None:
    """The broker and local pairs are made on first use and read back after; with them a
    CURVE client reaches a CURVE server, and a client with a stranger's server key does
    not."""
    broker, local = local_keys(tmp_path)
    assert local_keys(tmp_path) == (broker, local)
    assert broker.secret is not None and local.secret is not None
    context = zmq.Context()
    try:
        server = context.socket(zmq.REP)
        server.curve_server = True
        server.curve_secretkey = broker.secret
        server.curve_publickey = broker.public
        port = server.bind_to_random_port("tcp://127.0.0.1")
        server.rcvtimeo = 5000

        def client(server_key: bytes) -> zmq.Socket[bytes]:
            sock = context.socket(zmq.REQ)
            sock.curve_secretkey = local.secret
            sock.curve_publickey = local.public
            sock.curve_serverkey = server_key
            sock.linger = 0
            sock.rcvtimeo = 5000
            sock.connect(f"tcp://127.0.0.1:{port}")
            return sock

        good = client(broker.public)
        good.send(b"ping")
        assert server.recv() == b"ping"
        server.send(b"pong")
        assert good.recv() == b"pong"
        stranger = new_keypair("stranger", tmp_path / "other")
        bad = client(stranger.public)  # the handshake fails: nothing arrives
        bad.send(b"ping")
        server.rcvtimeo = 500
        with pytest.raises(zmq.Again):
            server.recv()
        for sock in (good, bad, server):
            sock.close(0)
    finally:
        context.term()
