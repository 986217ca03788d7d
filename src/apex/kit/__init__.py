"""Shared infrastructure, written like a small library: no domain logic lives here."""
