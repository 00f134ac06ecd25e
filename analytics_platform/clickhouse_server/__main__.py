"""``python -m analytics_platform.clickhouse_server``: see :mod:`.cli`."""

import sys

from .cli import main

sys.exit(main())
