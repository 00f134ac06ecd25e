"""Rebuild the CRD schemas kept as test data from the operators' own CRD files.

    python tests/deploy/crds/refresh.py UPSTREAM_CRD.yaml [...]

Each served version of each CustomResourceDefinition becomes ``<group>_<kind>_<version>.json``: its
``openAPIV3Schema`` with the ``description`` texts removed (they are most of the bytes and no part
of validation), minified. SOURCES.md says which release of which repository each file came from.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent


def strip_descriptions(node: Any) -> Any:
    if isinstance(node, dict):
        # "description" is a keyword only at schema level; a property named "description" is a
        # schema itself (a dict), so it is kept.
        return {k: strip_descriptions(v) for k, v in node.items() if not (k == "description" and isinstance(v, str))}
    if isinstance(node, list):
        return [strip_descriptions(v) for v in node]
    return node


def main(paths: list[str]) -> None:
    for path in paths:
        for doc in yaml.safe_load_all(Path(path).read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for version in spec["versions"]:
                if not version.get("served"):
                    continue
                schema = strip_descriptions(version["schema"]["openAPIV3Schema"])
                name = f"{spec['group']}_{spec['names']['kind']}_{version['name']}.json"
                (HERE / name).write_text(json.dumps(schema, separators=(",", ":"), sort_keys=True) + "\n")
                print(name)


if __name__ == "__main__":
    main(sys.argv[1:])
