import logging

from django.apps import AppConfig
from django.conf import settings

logger = logging.getLogger(__name__)


class PortalConfig(AppConfig):
    name = "portal"
    verbose_name = "Portal"

    def ready(self) -> None:
        if not settings.STACKPORT_API_THROTTLE_ENABLED:
            # Production refuses to start instead (portal/settings.py).
            logger.warning(
                "API rate limits are off: the cache %s has no atomic increment; use redis:// or memcached.",
                settings.CACHES["default"]["BACKEND"],
            )
