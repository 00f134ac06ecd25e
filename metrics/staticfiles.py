"""plotly.js as a static file of the dashboards, straight from the installed plotly wheel.

The wheel ships ``plotly/package_data/plotly.min.js`` (its version pinned in pyproject.toml), so
nothing is vendored into the repository and there is no front-end build. This finder exposes that
one file (not the wheel's data sets and widget bundle) as ``plotly/plotly.min.js``, so that
``collectstatic`` hashes and compresses it like the admin's files and WhiteNoise serves it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, overload

from django.contrib.staticfiles.finders import BaseFinder
from django.core.checks import CheckMessage, Error
from django.core.files.storage import FileSystemStorage

PREFIX = "plotly"
FILENAME = "plotly.min.js"
STATIC_NAME = f"{PREFIX}/{FILENAME}"


def _package_data() -> Path | None:
    # find_spec, not import: plotly's import is heavy and only its data file is needed here.
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "package_data"


class PlotlyFinder(BaseFinder):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.location = _package_data()
        self.storage: FileSystemStorage | None = None
        if self.location is not None and (self.location / FILENAME).is_file():
            self.storage = FileSystemStorage(location=self.location)
            self.storage.prefix = PREFIX  # type: ignore[attr-defined]  # read by collectstatic

    def check(self, **kwargs: Any) -> list[CheckMessage]:
        if self.storage is None:
            return [Error(f"{FILENAME} is not in the installed plotly package", id="metrics.E001")]
        return []

    @overload
    def find(self, path: str, find_all: Literal[False] = False) -> str | None: ...
    @overload
    def find(self, path: str, find_all: Literal[True]) -> list[str]: ...
    def find(self, path: str, find_all: bool = False, **kwargs: Any) -> str | list[str] | None:
        find_all = find_all or bool(kwargs.get("all"))  # Django < 6.1 still passes all=
        found = [self.storage.path(FILENAME)] if self.storage is not None and path == STATIC_NAME else []
        if find_all:
            return found
        return found[0] if found else None

    def list(self, ignore_patterns: Iterable[str] | None) -> Iterator[tuple[str, FileSystemStorage]]:
        if self.storage is not None:
            yield FILENAME, self.storage
