from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import TypeAdapter, ValidationError

from apex.kit.clock import FrozenClock, SystemClock, UtcInstant
from apex.kit.error_handlers import _field_path
from apex.kit.errors import ApexError, Conflict, RateLimited, ServiceUnavailable
from apex.kit.ids import new_id, new_ids


def test_new_ids_are_uuid7_and_sort_by_creation() -> None:
    ids = [new_id() for _ in range(2000)]
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    assert len(set(ids)) == 2000
    millis = [i.int >> 80 for i in ids]
    assert millis == sorted(millis)
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    assert abs(millis[-1] - now_ms) < 5000


def test_ids_made_in_bulk_are_uuid7_of_now_and_distinct() -> None:
    before = int(datetime.now(UTC).timestamp() * 1000)
    ids = new_ids(5000)
    after = int(datetime.now(UTC).timestamp() * 1000)
    assert len(ids) == 5000
    assert len(set(ids)) == 5000
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    assert all(before <= i.int >> 80 <= after for i in ids)
    # The 74 random bits vary: 5,000 draws of the 12-bit field take about 2,874 of its
    # 4,096 values (4096 * (1 - e^(-5000/4096))); the 62-bit field never repeats.
    assert len({(i.int >> 64) & 0xFFF for i in ids}) > 2700
    assert len({i.int & ((1 << 62) - 1) for i in ids}) == 5000
    assert new_ids(0) == []


def test_frozen_clock_moves_only_when_told() -> None:
    clock = FrozenClock(datetime(2026, 3, 1, tzinfo=UTC))
    first = clock.now()
    assert clock.now() == first
    clock.advance(90)
    assert (clock.now() - first).total_seconds() == 90
    assert clock.monotonic() == 90
    assert SystemClock().now().tzinfo is UTC


def test_error_bodies_and_headers() -> None:
    assert Conflict("taken", reason="uq_x").body() == {
        "error": "Conflict",
        "detail": "taken",
        "reason": "uq_x",
    }
    assert Conflict("x").status_code == 409
    limited = RateLimited("slow down", retry_after=0.2)
    assert limited.headers() == {"Retry-After": "1"}  # never 0: clients would spin
    assert ServiceUnavailable("busy", retry_after=7.6).headers() == {"Retry-After": "8"}
    assert ApexError("teapot", status_code=418).status_code == 418


def test_field_paths_read_like_the_payload() -> None:
    assert _field_path(("body", "items", 2, "name")) == "items[2].name"
    assert _field_path(("body", 0, "slug")) == "[0].slug"
    assert _field_path(("query", "limit")) == "limit"
    assert _field_path(("body",)) == "body"
    assert _field_path(()) == "body"


@pytest.mark.parametrize(
    "sent",
    ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-05:00", "1969-12-31T23:59:59Z"],
)
def test_client_times_out_of_range_are_refused_not_overflowed(sent: str) -> None:
    with pytest.raises(ValidationError, match="must be between 1970 and 2100"):
        TypeAdapter(UtcInstant).validate_python(sent)


def test_client_times_are_normalised_to_utc() -> None:
    instant = TypeAdapter(UtcInstant).validate_python("2026-11-01T01:30:00+02:00")
    assert instant.isoformat() == "2026-10-31T23:30:00+00:00"


async def test_the_embedded_mailer_writes_each_mail_as_a_file(tmp_path: Path) -> None:
    from email import message_from_bytes

    from apex.kit.mail import FileMailer

    mailer = FileMailer(tmp_path / "mail", "Apex <apex@example.test>")
    await mailer.send("someone@example.test", "Hello", "Token: abc\n")
    [written] = list((tmp_path / "mail").glob("*.eml"))
    mail = message_from_bytes(written.read_bytes())
    assert (mail["To"], mail["From"], mail["Subject"]) == (
        "someone@example.test",
        "Apex <apex@example.test>",
        "Hello",
    )
    assert mail.get_payload() == "Token: abc\n"


def test_sealed_secrets_open_only_with_their_key() -> None:
    from apex.kit.sealing import PREFIX, SealBroken, Sealer

    sealer = Sealer("the-key")
    sealed = sealer.seal("whsec_abc")
    assert sealed.startswith(PREFIX)
    assert "whsec_abc" not in sealed
    assert sealed != sealer.seal("whsec_abc")  # a fresh nonce every time
    assert sealer.open(sealed) == "whsec_abc"
    assert sealer.open("whsec_plain") == "whsec_plain"  # stored before a key was set
    with pytest.raises(SealBroken, match="does not open"):
        Sealer("another-key").open(sealed)
    middle = len(PREFIX) + 20
    tampered = sealed[:middle] + ("A" if sealed[middle] != "A" else "B") + sealed[middle + 1 :]
    for altered in (tampered, sealed[:-3], sealed + "!"):
        with pytest.raises(SealBroken):
            sealer.open(altered)
    with pytest.raises(SealBroken, match="needs APEX_SECRET_KEY"):
        Sealer(None).open(sealed)
    assert Sealer(None).seal("whsec_abc") == "whsec_abc"  # the embedded default
