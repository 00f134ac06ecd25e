"""CPU of a wrong-password login attempt against a throttled one: what the login throttle saves.

    PYTHONPATH=. python bench/bench_login_throttle.py [--attempts 20]

Runs in this process with a throwaway SQLite database and var/ (the local settings: Django's
default PBKDF2 hasher, the file-based ``auth_throttle`` cache). Each attempt goes through
``django.contrib.auth.authenticate`` like ``POST /auth/token`` and the admin login do. Prints the
CPU time per attempt (median) of: a wrong password with the throttle's budget not yet spent (the
password is hashed), and an attempt once the username's budget is spent (``LoginThrottled`` before
any hashing).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--attempts", type=int, default=20)
    args = parser.parse_args()
    var = tempfile.mkdtemp(prefix="bench-login-")
    os.environ.pop("DATABASE_URL", None)
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "analytics_platform.settings",
            "ANALYTICS_VAR_DIR": var,
            "LOG_LEVEL": "WARNING",
            # Budgets large enough for the unthrottled phase, then spent on purpose.
            "AUTH_THROTTLE_IP_ATTEMPTS": "0",
            "AUTH_THROTTLE_USERNAME_FAILURES": str(args.attempts),
        }
    )
    import django

    django.setup()
    from django.contrib.auth import authenticate, get_user_model
    from django.core.management import call_command
    from django.test import RequestFactory

    from accounts.throttle import LoginThrottled

    call_command("migrate", verbosity=0, interactive=False)
    get_user_model().objects.create_user("victim", password="the-right-password-" + "x" * 10)
    request = RequestFactory().post("/auth/token", REMOTE_ADDR="203.0.113.9")

    def attempt() -> tuple[float, bool]:
        started = time.process_time()
        try:
            authenticate(request, username="victim", password="a-wrong-guess")
            throttled = False
        except LoginThrottled:
            throttled = True
        return time.process_time() - started, throttled

    hashed = [attempt() for _ in range(args.attempts)]
    assert not any(t for _, t in hashed), "throttled too early"
    refused = [attempt() for _ in range(args.attempts)]
    assert all(t for _, t in refused), "not throttled after the budget"
    wrong = statistics.median(c for c, _ in hashed)
    cheap = statistics.median(c for c, _ in refused)
    print(f"wrong password, hashed:   {wrong * 1000:8.2f} ms CPU per attempt (median of {args.attempts})")
    print(f"throttled, not hashed:    {cheap * 1000:8.2f} ms CPU per attempt (median of {args.attempts})")
    print(f"ratio:                    {wrong / cheap:8.0f} x")


if __name__ == "__main__":
    main()
