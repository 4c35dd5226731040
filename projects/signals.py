"""Signals tenancy sends to the floors above it (billing starts a trial, for instance).

Tenancy is the ground floor: it never imports the apps built on it, it tells them."""

from django.dispatch import Signal

# Sent inside create_organization's transaction: organization, origin.
organization_created = Signal()
