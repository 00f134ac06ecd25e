"""Operator-facing actions of the platform itself (bootstrap of a fresh installation)."""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.staticfiles import finders
from django.core.management import call_command


def admin_user_ensure(*, username: str, password: str | None) -> str | None:
    """Create the superuser ``username`` if it does not exist.

    Returns the password when one was generated (to be shown once), otherwise None. An existing
    user is left untouched, so a restart never rotates a password someone already uses.
    """
    user_model = get_user_model()
    if user_model.objects.filter(username=username).exists():
        return None
    generated = None
    if not password:
        generated = password = secrets.token_urlsafe(16)
    user_model.objects.create_superuser(username=username, email="", password=password)
    return generated


# collectstatic's default ignore patterns: the same files are fingerprinted as are collected.
_STATIC_IGNORE = ["CVS", ".*", "*~"]
STATIC_FINGERPRINT_NAME = ".sources-fingerprint"


def _static_sources_fingerprint() -> str:
    digest = hashlib.sha256(repr(settings.STORAGES["staticfiles"]).encode())
    entries = []
    for finder in finders.get_finders():
        for path, storage in finder.list(_STATIC_IGNORE):
            stat = Path(storage.path(path)).stat()
            entries.append(f"{getattr(storage, 'prefix', None) or ''}/{path}\t{stat.st_size}\t{stat.st_mtime_ns}")
    for entry in sorted(entries):
        digest.update(entry.encode() + b"\n")
    return digest.hexdigest()


def static_files_collect() -> bool:
    """Run ``collectstatic`` unless STATIC_ROOT already holds the current sources; True when it ran.

    Hashing and compressing (gzip and brotli) the ~170 files, plotly.js among them, each under its
    hashed and its plain name, costs 40-70 s of CPU here, and WhiteNoise redoes all of it on every
    run: a restart of the local stack with the same installed packages skips it. The fingerprint
    covers every source file's name, size and mtime, and the storage backend, so an upgraded
    package or a new file collects again.
    """
    root = Path(settings.STATIC_ROOT)
    stamp = root / STATIC_FINGERPRINT_NAME
    fingerprint = _static_sources_fingerprint()
    manifest = root / "staticfiles.json"
    if manifest.is_file() and stamp.is_file() and stamp.read_text() == fingerprint:
        return False
    call_command("collectstatic", interactive=False, clear=True, verbosity=0)
    stamp.write_text(fingerprint)
    return True
