"""docs/security.md renders the permission policy; it must say what the code enforces."""

from __future__ import annotations

from pathlib import Path

from apex.identity.policy import LEAST_ROLE, ROLE_ORDER, allows

DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"


def test_the_documented_policy_table_is_the_enforced_one() -> None:
    roles = [role.value for role in reversed(ROLE_ORDER)]
    rows = {}
    for line in DOC.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if line.startswith("| `") and len(cells) == len(roles) + 1:
            rows[cells[0].strip("`")] = {
                role: cell == "✓" for role, cell in zip(roles, cells[1:], strict=True)
            }
    enforced = {perm: {role: allows(role, perm) for role in roles} for perm in LEAST_ROLE}
    assert rows == enforced
