"""Who may do what: named permissions mapped to roles, in one table.

Roles are ordered owner ⊇ admin ⊇ member ⊇ viewer; each permission names the least role
that holds it.
"""

from __future__ import annotations

from apex.identity.models import Role

ROLE_ORDER = [Role.VIEWER, Role.MEMBER, Role.ADMIN, Role.OWNER]

LEAST_ROLE: dict[str, Role] = {
    "org:read": Role.VIEWER,
    "org:manage": Role.ADMIN,
    "members:manage": Role.ADMIN,
    "billing:manage": Role.OWNER,
    "audit:read": Role.OWNER,
    "usage:read": Role.VIEWER,
    "usage:write": Role.MEMBER,
    "agents:run": Role.MEMBER,
    "reports:read": Role.VIEWER,
    "findings:act": Role.ADMIN,  # adopt (its verified saving is billed) or dismiss
    "alerts:manage": Role.ADMIN,  # alert rules: who is notified, where, about what
    "threads:write": Role.MEMBER,  # create, rename, delete threads; post without a run
}


def allows(role: str, permission: str) -> bool:
    least = LEAST_ROLE[permission]
    return ROLE_ORDER.index(Role(role)) >= ROLE_ORDER.index(least)
