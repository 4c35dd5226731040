"""The Celery application. Tasks live in each app's ``tasks.py``; the beat schedule is static, here."""

import os

from celery import Celery
from celery.signals import setup_logging

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

app = Celery("stackport")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@setup_logging.connect
def _use_django_logging(**kwargs: object) -> None:
    # Keep Celery from replacing the structlog configuration Django's LOGGING set up.
    import logging.config

    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)


def _install_structlog_step() -> None:
    from django_structlog.celery.steps import DjangoStructLogInitStep

    app.steps["worker"].add(DjangoStructLogInitStep)


_install_structlog_step()
