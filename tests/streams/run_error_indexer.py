"""``python -m tests.streams.run_error_indexer``: ``manage.py index_errors`` against the tests' osmem.

The one difference from the command: the private ``ELASTICSEARCH_ERRORS_NODE_CLASS`` setting
(production never sets it) is pointed at ``PlainJsonNode`` before anything connects, because the
in-memory test server refuses the client's ``compatible-with=8`` media type (tests/logs/osmem.py).
"""

from __future__ import annotations

import os

import django


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "analytics_platform.settings")
    from django.conf import settings

    from tests.logs.osmem import PlainJsonNode

    settings.ELASTICSEARCH_ERRORS_NODE_CLASS = PlainJsonNode
    django.setup()
    from django.core.management import call_command

    call_command("index_errors")


if __name__ == "__main__":
    main()
