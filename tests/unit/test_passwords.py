from __future__ import annotations

from argon2 import extract_parameters

from apex.identity import passwords


async def test_an_unknown_email_is_verified_as_slowly_as_a_known_one() -> None:
    """No user enumeration by timing: the hash an unknown email is checked against was made
    with the same argon2 parameters as every stored password, and matches nothing."""
    stored = await passwords.hash_password("correct horse battery staple")
    assert extract_parameters(passwords._DUMMY_HASH) == extract_parameters(stored)
    assert await passwords.verify_password(stored, "correct horse battery staple")
    assert not await passwords.verify_password(stored, "wrong")
    assert not await passwords.verify_password(None, "correct horse battery staple")
    assert not await passwords.verify_password(None, "")
