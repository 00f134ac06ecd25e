"""Data at rest encrypted with ClickHouse's encrypted disks, when a key is set.

chdb honours ClickHouse's ``storage_configuration`` (measured on chdb 26.9): the ``default``
storage policy is redefined onto an ``encrypted`` disk (AES-256-CTR) that wraps a local disk under
``DATA_DIR/encrypted/``, so every MergeTree table, its rollups and the materialized views' targets
included, writes its parts encrypted without any change to the schema. Table metadata (the
``CREATE`` statements) stays readable: it is the schema, not the data.

The key never touches the disk: the engine's config names the environment variable
(``from_env``) and chdb reads it from the server's environment. Measured, and the reason for the
marker file: opened *without* the key, an encrypted data dir does not fail, its tables simply
look empty and new rows go to the plain disk, unencrypted. So the server records that a data dir
is encrypted (``ENCRYPTED`` beside the data) and refuses to start it without the key; a wrong key
fails chdb's start (DATA_ENCRYPTION_ERROR, the parts cannot be deciphered). An existing plain data
dir is not encrypted in place: the server refuses the key there rather than leave old parts
unencrypted beside new ones (copy the tables into a new, encrypted data dir instead).
"""

from __future__ import annotations

import re
from pathlib import Path
from xml.sax.saxutils import escape

KEY_ENV = "CLICKHOUSE_SERVER_ENCRYPTION_KEY"
_KEY_RE = re.compile(r"^[0-9a-fA-F]{64}$")  # 32 bytes: AES-256
MARKER = "ENCRYPTED"
# What chdb creates in a data dir on its first start: a dir without them holds no data yet.
_ENGINE_DIRS = ("metadata", "store", "data")


class EncryptionError(ValueError):
    """The key and the data dir do not go together; the message says what to do."""


def key_check(value: str | None) -> str | None:
    """The key from the environment, or None when unset; refuses one that is not 64 hex digits."""
    if not value:
        return None
    if not _KEY_RE.match(value):
        raise EncryptionError(f"${KEY_ENV} must be 64 hex digits (a 256-bit key), e.g. from `openssl rand -hex 32`")
    return value


def data_dir_prepare(data_dir: Path, *, key: str | None) -> bool:
    """Check the data dir against the key (marking a fresh one encrypted); whether it is encrypted."""
    marked = (data_dir / MARKER).exists()
    if key is None:
        if marked:
            raise EncryptionError(
                f"{data_dir} is encrypted: set ${KEY_ENV} (without it its tables would look empty"
                " and new rows would be written unencrypted)"
            )
        return False
    if not marked:
        if any((data_dir / name).exists() for name in _ENGINE_DIRS):
            raise EncryptionError(
                f"{data_dir} already holds unencrypted data: ${KEY_ENV} applies to a new data dir"
                " (start one with the key and copy the tables into it)"
            )
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / MARKER).write_text("AES_256_CTR, key from the environment\n")
    return True


def storage_config(data_dir: str) -> str:
    """The ``storage_configuration`` that puts the ``default`` policy on an encrypted disk."""
    plain = escape(str(Path(data_dir) / "encrypted"))
    # The encrypted disk's own path is a subfolder ("parts/"): were it the plain disk's root, the
    # engine would find the parts on both disks at the next start and refuse to attach them.
    return (
        "<storage_configuration><disks>"
        f"<plain_under_encrypted><type>local</type><path>{plain}/</path></plain_under_encrypted>"
        "<encrypted><type>encrypted</type><disk>plain_under_encrypted</disk><path>parts/</path>"
        f'<algorithm>AES_256_CTR</algorithm><key_hex from_env="{KEY_ENV}"/></encrypted>'
        "</disks><policies>"
        "<default><volumes><main><disk>encrypted</disk></main></volumes></default>"
        "</policies></storage_configuration>"
    )
