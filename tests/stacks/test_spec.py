"""The spec: what a component provides to the others never depends on what its variables
are called (a variable named ``host`` used to crash every operation of the stack)."""

from __future__ import annotations

import pytest

from stacks.runtime import lifecycle
from stacks.runtime.spec import SpecError, build_spec
from tests.conftest import Team

pytestmark = pytest.mark.django_db


def test_a_variable_named_host_does_not_break_what_a_component_provides(
    team: Team, offered_catalog: None
) -> None:
    env = lifecycle.create_project(
        organization=team.org, actor=team.owner, name="Blog", region="eu-central", template="lamp"
    )
    release = env.releases.get()
    rows = release.spec["components"]
    db = next(r for r in rows if r["component"] == "mariadb")
    db["env"] = {**(db.get("env") or {}), "host": "elsewhere.example"}
    release.save(update_fields=["spec"])

    spec = build_spec(env, release)

    php = dict(next(c for c in spec.components if c.name == "php").env)
    assert "@db:" in php["DATABASE_URL"] and "elsewhere" not in php["DATABASE_URL"]


def test_a_provided_value_without_its_placeholder_is_a_clear_error(
    team: Team, offered_catalog: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stacks.models import Component

    env = lifecycle.create_project(
        organization=team.org, actor=team.owner, name="Blog", region="eu-central", template="lamp"
    )
    mariadb = Component.objects.get(code="mariadb")
    Component.objects.filter(pk=mariadb.pk).update(
        provides={"DATABASE_URL": "mysql://{NO_SUCH_VALUE}@{host}/app"}
    )

    with pytest.raises(
        SpecError, match=r"^The db component cannot provide its address: 'NO_SUCH_VALUE' is missing"
    ):
        build_spec(env, env.releases.get())
