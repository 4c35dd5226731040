"""Every management command builds its parser and refuses bad input with a clear message."""

from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command, get_commands, load_command_class

OURS = sorted(name for name, app in get_commands().items() if app in ("stacks", "projects"))


@pytest.mark.parametrize("name", OURS)
def test_the_command_parser_builds(name: str) -> None:
    parser = load_command_class(get_commands()[name], name).create_parser("manage.py", name)
    assert parser.format_help()


@pytest.mark.django_db
def test_image_commands_refuse_an_unknown_version() -> None:
    with pytest.raises(CommandError, match="no component version matches"):
        call_command("build_images", "--only-version", "0.0-nope")


@pytest.mark.django_db
def test_add_host_refuses_bad_input() -> None:
    with pytest.raises(CommandError, match="give NAME URL REGION"):
        call_command("add_host", "only-a-name")
    with pytest.raises(CommandError, match="unix:///path"):
        call_command("add_host", "h1", "http://evil; rm -rf /", "eu-central")
