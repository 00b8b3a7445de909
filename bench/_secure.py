"""The secure side of the benches: a Loom home of the bench's own and an ACL enrolling
one identity, ``bench``, with the rights the bench's roles need (and no more)."""

from __future__ import annotations

import os
from pathlib import Path

from loom.broker import SecuritySettings
from loom.keys import local_keys, new_keypair
from loom.session import PeerKey, peer_key

RIGHTS = """
publish = ["bench.**"]
subscribe = ["bench.**"]
serve = ["bench.*"]
call = ["bench.*"]
read = ["directory"]
"""


def secure_site(tmp: str) -> tuple[SecuritySettings, PeerKey]:
    """Point ``$LOOM_HOME`` (inherited by every role) at a new home in ``tmp`` and write
    an ACL enrolling ``bench``: the secure broker's settings and the keys its peers
    present. The bench never touches the user's own home."""
    os.environ["LOOM_HOME"] = os.path.join(tmp, "home")
    local_keys()
    pair = new_keypair("bench", Path(tmp))
    acl = Path(tmp) / "acl.toml"
    acl.write_text(f'[identities.bench]\nkey_file = "{pair.name}.key"\n{RIGHTS}')
    key = peer_key(pair.path)
    assert key is not None
    return SecuritySettings(acl=str(acl), audit_log="off"), key
