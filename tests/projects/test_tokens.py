"""API tokens: the services and the account page."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from projects import services
from projects.models import ApiToken, AuditEvent
from projects.services import ServiceError
from tests.conftest import Team, client_for

pytestmark = pytest.mark.django_db


def test_create_stores_only_the_hash_and_audits_without_the_secret(team: Team) -> None:
    token, secret = services.create_api_token(user=team.developer, name="deploy script", read_only=True)
    assert secret.startswith(f"sp_{token.prefix}_") and len(secret) > 40
    assert token.token_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in str(ApiToken.objects.filter(pk=token.pk).values().get())
    event = AuditEvent.objects.get(action="token.create")
    assert (
        event.actor == team.developer
        and secret not in str(event.data)
        and event.target.endswith(token.prefix)
    )


def test_authenticate_finds_the_token_and_refuses_wrong_revoked_and_expired(team: Team) -> None:
    token, secret = services.create_api_token(user=team.developer, name="t", expires_in_days=1)
    assert services.authenticate_api_token(secret) == token
    changed = secret[:-1] + ("B" if secret.endswith("A") else "A")
    for wrong in ("", "sp_", f"sp_{token.prefix}_x", changed, "Bearer " + secret, secret + "x"):
        assert services.authenticate_api_token(wrong) is None
    with time_machine.travel(timezone.now() + timedelta(days=2)):
        assert services.authenticate_api_token(secret) is None
    services.revoke_api_token(token=token, actor=team.developer)
    assert services.authenticate_api_token(secret) is None
    assert AuditEvent.objects.filter(action="token.revoke").count() == 1
    services.revoke_api_token(token=token, actor=team.developer)  # twice: no error, one audit row
    assert AuditEvent.objects.filter(action="token.revoke").count() == 1


def test_last_used_is_written_at_most_once_a_minute(team: Team) -> None:
    token, secret = services.create_api_token(user=team.developer, name="t")
    services.authenticate_api_token(secret)
    first = ApiToken.objects.get(pk=token.pk).last_used_at
    assert first is not None
    services.authenticate_api_token(secret)
    assert ApiToken.objects.get(pk=token.pk).last_used_at == first
    with time_machine.travel(timezone.now() + timedelta(seconds=61)):
        services.authenticate_api_token(secret)
        assert ApiToken.objects.get(pk=token.pk).last_used_at > first


def test_a_deactivated_user_token_does_not_authenticate(team: Team) -> None:
    _token, secret = services.create_api_token(user=team.developer, name="t")
    team.developer.is_active = False
    team.developer.save()
    assert services.authenticate_api_token(secret) is None


def test_bad_input_is_refused(team: Team) -> None:
    with pytest.raises(ServiceError, match="name"):
        services.create_api_token(user=team.developer, name="  ")
    with pytest.raises(ServiceError, match="control"):
        services.create_api_token(user=team.developer, name="a\x00b")
    with pytest.raises(ServiceError, match="days"):
        services.create_api_token(user=team.developer, name="t", expires_in_days=0)
    with pytest.raises(ServiceError) as exc:
        services.create_api_token(user=team.developer, name="t", organization=team.outsider_org)
    assert exc.value.status == 404
    assert not ApiToken.objects.exists()


def test_only_the_owner_revokes_a_token(team: Team) -> None:
    token, _secret = services.create_api_token(user=team.developer, name="t")
    with pytest.raises(ServiceError):
        services.revoke_api_token(token=token, actor=team.owner)
    assert ApiToken.objects.get(pk=token.pk).revoked_at is None


# --- pages ---------------------------------------------------------------------------------------
def test_page_creates_a_token_and_shows_the_secret_once(team: Team) -> None:
    client = client_for(team.developer)
    assert client.get("/account/tokens/").status_code == 200
    response = client.post(
        "/account/tokens/",
        {
            "name": "<script>x</script>",
            "organization": team.org.pk,
            "read_only": "on",
            "expires_in_days": "30",
        },
    )
    assert response.status_code == 201
    token = ApiToken.objects.get()
    assert token.organization == team.org and token.read_only and token.expires_at is not None
    body = response.content.decode()
    assert f"sp_{token.prefix}_" in body and "&lt;script&gt;x" in body and "<script>x" not in body
    assert response["Cache-Control"] == "no-store"
    secret = body.split('id="new-token">', 1)[1].split("<", 1)[0]
    assert services.authenticate_api_token(secret) == token
    again = client.get("/account/tokens/").content.decode()
    assert secret not in again and token.prefix in again


def test_page_refuses_another_organization_and_bad_input(team: Team) -> None:
    client = client_for(team.developer)
    response = client.post("/account/tokens/", {"name": "t", "organization": team.outsider_org.pk})
    assert response.status_code == 400
    assert client.post("/account/tokens/", {"name": ""}).status_code == 400
    assert not ApiToken.objects.exists()


def test_revoke_page_and_404_for_someone_elses_token(team: Team) -> None:
    mine, _ = services.create_api_token(user=team.developer, name="mine")
    theirs, _ = services.create_api_token(user=team.outsider, name="theirs")
    client = client_for(team.developer)
    assert client.post(f"/account/tokens/{theirs.pk}/revoke/").status_code == 404
    assert client.get(f"/account/tokens/{mine.pk}/revoke/").status_code == 405
    assert client.post(f"/account/tokens/{mine.pk}/revoke/").status_code == 302
    assert ApiToken.objects.get(pk=mine.pk).revoked_at is not None
    assert ApiToken.objects.get(pk=theirs.pk).revoked_at is None


def test_tokens_page_needs_login() -> None:
    from django.test import Client

    assert Client().get("/account/tokens/").status_code == 302
