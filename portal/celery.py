"""The Celery application. Tasks live in each app's ``tasks.py``; the beat schedule is static, here."""

import logging.config
import os

from celery import Celery
from celery.signals import setup_logging
from django.conf import settings
from django_structlog.celery.steps import DjangoStructLogInitStep

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

app = Celery("stackport")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@setup_logging.connect
def _use_django_logging(**kwargs: object) -> None:
    # Keep Celery from replacing the structlog configuration Django's LOGGING set up.
    logging.config.dictConfig(settings.LOGGING)


app.steps["worker"].add(DjangoStructLogInitStep)
