"""Embedded ClickHouse server: the real ClickHouse engine (chdb) behind the native TCP protocol.

There is no installable modern ClickHouse server here, so this package lets clickhouse-driver and
django-clickhouse-backend talk to chdb exactly as to a ClickHouse cluster. Modules, in the order
bytes flow: :mod:`.protocol` (packets), :mod:`.compression` (LZ4/ZSTD frames), :mod:`.native`
(block boundaries), :mod:`.sql` (INSERT routing, statement gate), :mod:`.engine` (chdb),
:mod:`.session` (one connection), :mod:`.server` (socket and threads), :mod:`.limits` (connection
cap, timeouts, accept() errors), :mod:`.tls`, :mod:`.cli` (entry point) and :mod:`.testing`
(subprocess helper for tests and the dev stack).

Run it: ``CLICKHOUSE_SERVER_PASSWORD=P python -m analytics_platform.clickhouse_server --data-dir DIR
[--host 127.0.0.1] [--port 9000] [--user U] [--tls-cert C --tls-key K] [--max-connections N ...]``
(a password is required; SIGTERM/SIGINT stop it gracefully); from Python tests:
``testing.start_server_process(data_dir=...)`` (generates one). Client statements pass
:class:`.sql.StatementGate` first: no file, URL or remote access from SQL.

Known differences from a ClickHouse server: external tables, ``WITH TOTALS``/extremes packets and
the ``Variant``/``Dynamic``/``JSON``/``AggregateFunction`` column types in client INSERT blocks
are not supported; one server process owns its data directory (chdb locks it).

Nothing here imports chdb at package import time; only the server modules do.
"""
