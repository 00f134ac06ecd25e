"""``manage.py devstack``: the whole service on the embedded default, until Ctrl-C."""

from __future__ import annotations

import io
import os
import sys
import time
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from analytics_platform import kafka
from analytics_platform.clickhouse import database_ensure
from analytics_platform.demo import demo_write_key_ensure
from analytics_platform.devstack import processes, stack
from analytics_platform.devstack.supervisor import Supervisor
from analytics_platform.services import admin_user_ensure, static_files_collect


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host or "127.0.0.1", int(port)


class Command(BaseCommand):
    help = "Run broker, ClickHouse server, schema registry, web, stream workers and Celery on the embedded default."

    def handle(self, *args: Any, **options: Any) -> None:
        if settings.PRODUCTION:
            raise CommandError("devstack runs the embedded default only; unset ANALYTICS_ENV=production")
        started = time.monotonic()
        env = stack.runtime_dirs_prepare()
        os.environ.update(env)
        sup = Supervisor()
        sup.install_signal_handlers()
        try:
            self._start_infrastructure(sup)
            self._bootstrap(sup)
            port = stack.env_port()
            for spec in stack.application_processes(port=port):
                sup.start(spec.name, spec.argv, env, restart=spec.restart)
            processes.wait_for_port("127.0.0.1", port, timeout=60)
            sup.say(
                "devstack",
                f"ready in {time.monotonic() - started:.1f}s: http://127.0.0.1:{port}/"
                " (admin at /admin/, a demo player at /demo/)",
            )
        except BaseException as exc:
            sup.say("devstack", f"start failed: {exc!r}")
            stack.stack_shutdown(sup, drain=False)  # nothing was accepted yet
            raise CommandError(str(exc)) from exc
        sup.wait()
        kept = stack.stack_shutdown(sup)
        sys.exit(0 if kept and sup.failed is None else 1)

    def _start_infrastructure(self, sup: Supervisor) -> None:
        host, port = _host_port(settings.KAFKA_BOOTSTRAP_SERVERS.split(",")[0])
        sup.start(
            "broker",
            [
                str(processes.tansu_path()),
                "broker",
                "--listener-url",
                f"tcp://{host}:{port}",
                "--advertised-listener-url",
                f"tcp://{host}:{port}",
            ],
            {"RUST_LOG": os.environ.get("TANSU_LOG", "warn")},
            restart=False,  # memory-only: a new broker would be an empty one (see devstack/stack.py)
        )
        ch = settings.DATABASES["clickhouse"]
        sup.start(
            "clickhouse",
            stack.manage(
                "clickhouse_server",
                "--host",
                ch["HOST"],
                "--port",
                str(ch["PORT"]),
                "--data-dir",
                str(settings.VAR_DIR / "clickhouse"),
                "--user",
                ch["USER"],
            ),
            # The server requires it (in the environment: argv shows in ps); see settings.py.
            {"CLICKHOUSE_SERVER_PASSWORD": str(ch["PASSWORD"])},
        )
        registry_host, registry_port = stack.schema_registry_address()
        sup.start(
            "registry",
            stack.manage(
                "schema_registry",
                "--host",
                registry_host,
                "--port",
                str(registry_port),
                "--data-dir",
                str(settings.VAR_DIR / "schema-registry"),
            ),
        )
        addresses = ((host, port), (ch["HOST"], int(ch["PORT"])), (registry_host, registry_port))
        for child, (h, p) in zip(sup.children, addresses, strict=True):
            processes.wait_for_port(h, p, timeout=60, process=child.process)

    def _bootstrap(self, sup: Supervisor) -> None:
        created = kafka.topics_ensure()
        sup.say("devstack", f"kafka topics ready (created: {', '.join(created) or 'none'})")
        database_ensure()
        call_command("migrate", interactive=False, verbosity=0)
        call_command("migrate", database="clickhouse", interactive=False, verbosity=0)
        sup.say("devstack", "migrations applied (default, clickhouse)")
        # Before the stream worker starts: an incompatible schema change stops the stack here.
        registered = io.StringIO()
        call_command("schemas_register", stdout=registered)
        for line in registered.getvalue().splitlines():
            sup.say("devstack", f"schema {line}")
        started = time.monotonic()
        if static_files_collect():
            sup.say("devstack", f"static files collected in {time.monotonic() - started:.1f}s")
        if settings.DEMO_ENABLED:
            demo_write_key_ensure(port=stack.env_port())
            sup.say("devstack", "demo page write key ready (admin: Ingest > Write keys)")
        username = os.environ.get("ANALYTICS_ADMIN_USER", "admin")
        generated = admin_user_ensure(username=username, password=os.environ.get("ANALYTICS_ADMIN_PASSWORD"))
        if generated:
            sup.say("devstack", f"created admin user {username!r} with password {generated!r} (shown once)")
