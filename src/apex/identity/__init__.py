"""Identity: organisations, users, memberships and roles (login and tokens come later)."""
