"""CURVE identities: keypairs in ZeroMQ's certificate files, and the per-user Loom home.

A keypair is two files written by ``zmq.auth`` (the format every ZeroMQ binding reads):
``NAME.key`` holds the public key, ``NAME.key_secret`` both keys. Secret files are mode
0600 in a directory only their owner can enter; a new pair is written in a private
temporary directory first and moved into place, so the secret is never readable by
anyone else, not even for a moment.

The Loom home (``$LOOM_HOME``, else ``$XDG_DATA_HOME/loom``, else
``~/.local/share/loom``) holds this user's keys in ``keys/``: the broker's own pair and a
local client identity, made on first use, so that peers of the same user on the same
machine find both without any set-up.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import zmq.auth

from loom.errors import KeyFileError

__all__ = [
    "BROKER_KEY",
    "LOCAL_KEY",
    "Keypair",
    "dashboard_token",
    "key_dir",
    "list_keys",
    "load_keypair",
    "local_keys",
    "loom_home",
    "new_keypair",
    "public_key",
    "write_public",
]

BROKER_KEY = "broker"
"""The broker's own keypair in the Loom home."""
LOCAL_KEY = "local"
"""The identity local peers of the home's user present to its broker."""
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_PUBLIC, _SECRET = ".key", ".key_secret"


@dataclass(frozen=True)
class Keypair:
    """A CURVE keypair as Z85 text (40 characters each).

    Attributes:
        name: the file name without its suffix.
        public: the public key (what others enrol).
        secret: the secret key, ``None`` for a public key file alone.
        path: the file it was read from (or written to).
    """

    name: str
    public: bytes
    secret: bytes | None
    path: Path


def loom_home() -> Path:
    """This user's Loom home: ``$LOOM_HOME``, else ``$XDG_DATA_HOME/loom``, else
    ``~/.local/share/loom`` (not created here)."""
    explicit = os.environ.get("LOOM_HOME")
    if explicit:
        return Path(explicit).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data).expanduser() / "loom"


def key_dir(home: Path | None = None, *, create: bool = True) -> Path:
    """The keys directory of a Loom home (``home/keys``), made 0700 with its parents
    when ``create``.

    Raises:
        KeyFileError: it cannot be made, or others may enter it (group or world bits).
    """
    directory = (home or loom_home()) / "keys"
    if create:
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise KeyFileError(f"{directory}: cannot create the keys directory: {exc}") from exc
    if directory.exists() and directory.stat().st_mode & 0o077:
        raise KeyFileError(
            f"{directory}: other users may enter it (mode {directory.stat().st_mode & 0o777:o});"
            " make it 0700 (chmod 700)"
        )
    return directory


def _checked_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise KeyFileError(
            f"{name!r}: a key's name is 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def new_keypair(name: str, directory: Path, *, force: bool = False) -> Keypair:
    """Write a new keypair ``NAME.key`` / ``NAME.key_secret`` into ``directory``.

    Without ``force`` the secret file is linked into place, which fails if one exists:
    of two processes making the same pair at once, one wins and the other is told.

    Raises:
        KeyFileError: a bad name, a pair of that name exists (and not ``force``), or the
            files cannot be written.
    """
    _checked_name(name)
    public_file, secret_file = directory / f"{name}{_PUBLIC}", directory / f"{name}{_SECRET}"
    if not force and (public_file.exists() or secret_file.exists()):
        raise KeyFileError(f"{secret_file}: a key named {name!r} exists (--force replaces it)")
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".new-", dir=directory))  # 0700
        try:
            made_public, made_secret = zmq.auth.create_certificates(staging, name)
            os.chmod(made_secret, 0o600)
            os.chmod(made_public, 0o644)
            if force:
                os.replace(made_secret, secret_file)
            else:
                try:
                    os.link(made_secret, secret_file)  # atomic, and never over another
                except FileExistsError:
                    raise KeyFileError(
                        f"{secret_file}: a key named {name!r} exists (--force replaces it)"
                    ) from None
            os.replace(made_public, public_file)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except OSError as exc:
        raise KeyFileError(f"{directory}: cannot write the key {name!r}: {exc}") from exc
    return load_keypair(secret_file)


def public_key(text: str) -> bytes:
    """A CURVE public key written as its 40 Z85 characters, checked.

    Raises:
        KeyFileError: it is not 40 Z85 characters that decode to 32 bytes.
    """
    try:
        if len(text) == 40 and len(zmq.utils.z85.decode(text)) == 32:
            return text.encode()
    except (ValueError, KeyError):
        pass
    raise KeyFileError(f"{text[:60]!r}: not a CURVE public key (40 Z85 characters)")


def write_public(directory: Path, name: str, public: bytes) -> Path:
    """Write ``NAME.key`` holding ``public`` alone, in zmq.auth's format (zmq.auth
    writes a public file only beside a new secret one); returns its path."""
    path = directory / f"{_checked_name(name)}{_PUBLIC}"
    text = (
        "#   ZeroMQ CURVE Public Certificate\n"
        f'metadata\ncurve\n    public-key = "{public.decode()}"\n'
    )
    path.write_text(text)
    return path


def load_keypair(path: Path) -> Keypair:
    """Read a key file: a ``.key_secret`` file (both keys) or a ``.key`` file (public).

    Raises:
        KeyFileError: it is missing, unreadable, not a key file, or a secret file that
            others may read.
    """
    if path.name.endswith(_SECRET):
        name = path.name[: -len(_SECRET)]
        mode = path.stat().st_mode if path.exists() else 0
        if mode & 0o077:
            raise KeyFileError(
                f"{path}: other users may read this secret key (mode {mode & 0o777:o});"
                " make it 0600 (chmod 600)"
            )
    else:
        name = path.name.removesuffix(_PUBLIC)
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"{path}: not a readable key file: {exc}") from exc
    if len(public) != 40 or (secret is not None and len(secret) != 40):
        raise KeyFileError(f"{path}: the keys are not 40 Z85 characters")
    return Keypair(name, public, secret, path)


def list_keys(directory: Path) -> list[Keypair]:
    """Every key in ``directory`` (a secret file where there is one, else the public
    file), by name; files that are not keys are skipped.

    Raises:
        KeyFileError: a secret key file others may read.
    """
    if not directory.is_dir():
        return []
    found: dict[str, Path] = {}
    for path in sorted(directory.iterdir()):
        if path.name.endswith(_SECRET):
            found[path.name[: -len(_SECRET)]] = path
        elif path.name.endswith(_PUBLIC):
            found.setdefault(path.name.removesuffix(_PUBLIC), path)
    keys = []
    for name, path in sorted(found.items()):
        if _NAME.fullmatch(name):
            try:
                keys.append(load_keypair(path))
            except KeyFileError:
                if path.name.endswith(_SECRET):
                    raise
    return keys


def local_keys(home: Path | None = None) -> tuple[Keypair, Keypair]:
    """The home's broker and local client keypairs, made on first use.

    Raises:
        KeyFileError: the keys directory or a key file is unsafe or unreadable.
    """
    directory = key_dir(home)
    pairs = []
    for name in (BROKER_KEY, LOCAL_KEY):
        secret = directory / f"{name}{_SECRET}"
        if secret.exists():
            pairs.append(load_keypair(secret))
        else:
            try:
                pairs.append(new_keypair(name, directory))
            except KeyFileError:  # another process made it first
                if not secret.exists():
                    raise
                pairs.append(load_keypair(secret))
    return pairs[0], pairs[1]


def dashboard_token(home: Path | None = None) -> str:
    """The token the dashboard asks of its visitors, from ``dashboard.token`` in the
    Loom home (mode 0600), made on first use: the URL Loom prints carries it.

    Raises:
        KeyFileError: it cannot be read or made, or others may read it.
    """
    path = (home or loom_home()) / "dashboard.token"
    if not path.exists():
        key_dir(home)  # the home, private
        token = secrets.token_urlsafe(24)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first
            pass
        except OSError as exc:
            raise KeyFileError(f"{path}: cannot write the dashboard token: {exc}") from exc
        else:
            with os.fdopen(fd, "w") as out:
                out.write(token + "\n")
    mode = path.stat().st_mode
    if mode & 0o077:
        raise KeyFileError(
            f"{path}: other users may read it (mode {mode & 0o777:o}); make it 0600 (chmod 600)"
        )
    token = path.read_text().strip()
    if len(token) < 16:
        raise KeyFileError(f"{path}: not a token (delete it: a new one is made)")
    return token
