"""Production settings refuse weak keys and pass Django's deployment checks.

Each case starts a fresh interpreter: settings are read once, at start.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parents[2]
STRONG_SECRET = "Zq3" + "x9Lw2VbN7mKp4TfR8sYc1HgJ6dEaU5oQiW0nXlBzCvMeP" + "tk-prod-2026"


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "SECRET_KEY", "STACKPORT_"))}
    base.update(
        {
            "DJANGO_ENV": "production",
            "ALLOWED_HOSTS": "portal.example.com",
            "STACKPORT_VAR_DIR": str(ROOT / "var" / "test-prod"),
        }
    )
    base.update(env)
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=base, capture_output=True, text=True, timeout=120
    )


def _prod_keys() -> dict[str, str]:
    return {"SECRET_KEY": STRONG_SECRET, "STACKPORT_ENCRYPTION_KEYS": Fernet.generate_key().decode()}


def test_check_deploy_passes_with_real_keys() -> None:
    result = _run(["check", "--deploy", "--fail-level", "WARNING"], **_prod_keys())
    assert result.returncode == 0, result.stderr + result.stdout
    assert "no issues" in result.stdout


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"STACKPORT_ENCRYPTION_KEYS": Fernet.generate_key().decode()}, "SECRET_KEY must be set"),
        ({"SECRET_KEY": "short", "STACKPORT_ENCRYPTION_KEYS": Fernet.generate_key().decode()}, "too weak"),
        (
            {
                "SECRET_KEY": "django-insecure-" + "a1b2c3d4e5" * 6,
                "STACKPORT_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
            },
            "too weak",
        ),
        ({"SECRET_KEY": STRONG_SECRET}, "STACKPORT_ENCRYPTION_KEYS must be set"),
        ({"SECRET_KEY": STRONG_SECRET, "STACKPORT_ENCRYPTION_KEYS": "not-a-key"}, "not a Fernet key"),
        (
            {
                "SECRET_KEY": STRONG_SECRET,
                "STACKPORT_ENCRYPTION_KEYS": "c3RhY2twb3J0LWRldmVsb3BtZW50LW9ubHkta2V5ISE=",
            },
            "development key",
        ),
    ],
    ids=["no-secret", "short-secret", "django-insecure", "no-encryption-key", "bad-fernet", "dev-key"],
)
def test_production_refuses_to_start_without_strong_keys(env: dict[str, str], message: str) -> None:
    result = _run(["check"], **env)
    assert result.returncode != 0
    assert message in result.stderr


def test_production_refuses_debug() -> None:
    result = _run(["check"], DJANGO_DEBUG="true", **_prod_keys())
    assert result.returncode != 0
    assert "DJANGO_DEBUG must be off" in result.stderr


def test_unknown_environment_name_is_refused() -> None:
    result = _run(["check"], DJANGO_ENV="prod")
    assert result.returncode != 0
    assert "DJANGO_ENV must be one of" in result.stderr


def test_one_trusted_proxy_count_for_the_audit_log_metrics_and_rate_limits() -> None:
    result = _run(
        ["shell", "-c", "from django.conf import settings; print(settings.ALLAUTH_TRUSTED_PROXY_COUNT)"],
        TRUSTED_PROXY_COUNT="2",
        **_prod_keys(),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "2"
