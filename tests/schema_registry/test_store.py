"""The store's bounds, through the API layer in-process (the HTTP side is tested in test_hostile.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from analytics_platform.schema_registry.api import RegistryApi, RegistryError
from analytics_platform.schema_registry.store import Limits, Store


def body(name: str, doc: str = "") -> bytes:
    schema = {"type": "record", "name": name, "doc": doc, "fields": [{"name": "a", "type": "int"}]}
    return json.dumps({"schema": json.dumps(schema)}).encode()


def refused(api: RegistryApi, subject: str, payload: bytes) -> RegistryError:
    with pytest.raises(RegistryError) as caught:
        api.handle("POST", ["subjects", subject, "versions"], {}, payload)
    return caught.value


def test_each_bound_refuses_with_a_store_error_and_keeps_what_is_there(tmp_path: Path) -> None:
    store = Store(tmp_path, limits=Limits(schemas=4, schema_bytes=2_000, subjects=2, versions_per_subject=2))
    api = RegistryApi(store)
    api.handle("POST", ["subjects", "a", "versions"], {}, body("A"))
    api.handle("PUT", ["config", "a"], {}, b'{"compatibility": "NONE"}')
    api.handle("POST", ["subjects", "a", "versions"], {}, body("B"))
    error = refused(api, "a", body("C"))  # a third version of a
    assert (error.status, error.error_code) == (500, 50001) and "versions" in error.message
    api.handle("POST", ["subjects", "b", "versions"], {}, body("D"))
    assert "subjects" in refused(api, "c", body("E")).message
    assert "bytes" in refused(api, "b", body("D", doc="x" * 2_000)).message
    store.close()
    reopened = Store(tmp_path)
    assert sorted(reopened.subjects) == ["a", "b"]
    assert len(reopened.schemas) == 3  # A, B, D: nothing of the refused registrations
    reopened.close()
