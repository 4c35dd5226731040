"""What visitors of a site that does not run see, and path-prefix stripping, end to end: real
Docker engine, the real HAProxy edge (the ``haproxy`` fixture), operations run as the worker would."""

from __future__ import annotations

from typing import Any

import pytest

from stacks.backends.edge import MAINTENANCE_RETRY_AFTER
from stacks.runtime import lifecycle, support
from stacks.runtime.operations import sync_routes_for
from tests.conftest import verified
from tests.stacks.conftest import Caddy, fetch
from tests.stacks.test_lifecycle import (  # noqa: F401 (fixtures)
    STATIC,
    cleanup,
    deploy,
    engine_client,
    get,
    run,
    stackport,
)
from tests.stacks.test_support import staff

pytestmark = [pytest.mark.slow, pytest.mark.engine, pytest.mark.django_db, pytest.mark.timeout(900)]


def test_a_stopped_site_answers_its_page_and_a_suspended_one_says_unavailable(
    team: Any,
    stackport: Caddy,  # noqa: F811
    cleanup: list[Any],  # noqa: F811
    settings: Any,
) -> None:
    settings.STACKPORT_SITE_NAME = "Acme Cloud"
    env = deploy(team, cleanup, components=STATIC)
    assert get(stackport, env).status_code == 200

    run(lifecycle.set_running(environment=env, actor=team.developer, running=False))
    stopped = get(stackport, env, "/any/page")
    assert stopped.status_code == 503
    assert stopped.headers["Retry-After"] == MAINTENANCE_RETRY_AFTER
    assert stopped.headers["Content-Type"].startswith("text/html")
    assert "This site is stopped" in stopped.text and "Hosted on Acme Cloud" in stopped.text
    assert "{" not in stopped.text.split("<style>")[0]  # placeholders not expanded, braces kept
    assert "body {" in stopped.text

    run(lifecycle.set_running(environment=env, actor=team.developer, running=True))
    assert get(stackport, env).status_code == 200

    supporter = staff("Support")
    (stop,) = support.suspend_project(project=env.project, actor=supporter, reason="unpaid")
    run(stop)
    suspended = get(stackport, env)
    assert suspended.status_code == 503 and "This site is temporarily unavailable" in suspended.text
    assert "unpaid" not in suspended.text  # the reason is for the customer, not the visitors
    (start,) = support.resume_project(project=env.project, actor=supporter)
    run(start)
    assert get(stackport, env).status_code == 200


def test_a_prefix_route_passes_or_strips_its_prefix_as_chosen(
    team: Any,
    stackport: Caddy,  # noqa: F811
    cleanup: list[Any],  # noqa: F811
) -> None:
    env = deploy(team, cleanup, components=STATIC)
    stripped = lifecycle.add_domain(
        environment=env,
        actor=team.developer,
        hostname="site.example.test",
        path_prefix="/static",
        strip_prefix=True,
    )
    kept = lifecycle.add_domain(
        environment=env, actor=team.developer, hostname="site.example.test", path_prefix="/keep"
    )
    verified(stripped)
    verified(kept)
    sync_routes_for(env.pk)  # what the task queued on commit does

    def edge(path: str) -> Any:
        return fetch("GET", stackport.edge_url + path, headers={"Host": "site.example.test"})

    # nginx serves its page at / : reached through /static only because the prefix is stripped.
    assert edge("/static/").status_code == 200
    assert edge("/static").status_code == 200
    assert edge("/keep/").status_code == 404  # nginx has no /keep/: the full path arrived
