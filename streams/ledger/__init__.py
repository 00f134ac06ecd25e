"""The dead-letter replay ledger: which dead letters were replayed, by whom, with what result.

A Django app of its own, inside ``streams`` because replaying is a stream-worker operation, but
apart from ``streams`` itself: ``streams``' models and migrations are ClickHouse tables (routed by
``analytics_platform.db_routers``), while the ledger is a small transactional table in Django's
default database (PostgreSQL in production). Its own migrations never interleave with the
ClickHouse ones.
"""
