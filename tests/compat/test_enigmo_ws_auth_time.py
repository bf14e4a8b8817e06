"""Enigmo-WS `auth` timestamps: the Flutter app signs `DateTime.now().toIso8601String()`, local
time with no offset, so an offset-free timestamp is read as local time in an unknown zone; an
explicit offset keeps the strict ±60 s rule; every signature works once."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta, timezone

import pytest
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from enigmo.compat import services

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _frozen(time_machine, settings):
    settings.RATE_LIMITS_ENABLED = False
    time_machine.move_to(NOW, tick=False)


@pytest.fixture
def alice():
    key = SigningKey.generate()
    user = services.ews_register(
        signing_key=base64.b64encode(bytes(key.verify_key)).decode(),
        encryption_key=base64.b64encode(bytes(PrivateKey.generate().public_key)).decode(),
        nickname="alice",
        client_ip="127.0.0.1",
    )
    return user, key


def _auth(alice, timestamp: str):
    user, key = alice
    signature = base64.b64encode(key.sign(timestamp.encode()).signature).decode()
    return services.ews_authenticate(public_id=user.public_id, signature_b64=signature, timestamp=timestamp)


def _local(offset: timedelta, skew: timedelta = timedelta()) -> str:
    """What `DateTime.now().toIso8601String()` prints in a zone `offset` from UTC whose clock is `skew` off."""
    return (NOW + offset + skew).replace(tzinfo=None).isoformat(timespec="microseconds")


def test_offset_free_local_time_in_a_half_hour_zone_is_accepted_once(alice):
    """India (UTC+5:30): accepted, with 40 s of clock skew too; the same signature replayed is refused."""
    timestamp = _local(timedelta(hours=5, minutes=30), skew=timedelta(seconds=40))
    assert "+" not in timestamp and not timestamp.endswith("Z")
    assert _auth(alice, timestamp).public_id == alice[0].public_id
    with pytest.raises(services.Replayed):
        _auth(alice, timestamp)


def test_offset_free_time_off_every_quarter_hour_zone_is_refused(alice):
    """5 h 37 min ahead of UTC is 7 minutes from the nearest quarter-hour zone: refused."""
    with pytest.raises(services.AuthFailed):
        _auth(alice, _local(timedelta(hours=5, minutes=37)))


@pytest.mark.parametrize("offset", [timedelta(hours=-14, minutes=-15), timedelta(hours=14, minutes=15)])
def test_offset_free_time_beyond_fourteen_hours_is_refused(alice, offset):
    """No zone is more than 14 h from UTC."""
    with pytest.raises(services.AuthFailed):
        _auth(alice, _local(offset))


@pytest.mark.parametrize("offset", [timedelta(hours=-12), timedelta(hours=14), timedelta(hours=5, minutes=45), timedelta()])
def test_offset_free_time_in_real_zones_is_accepted(alice, offset):
    """Baker Island, Kiribati, Nepal and UTC itself."""
    assert _auth(alice, _local(offset)).public_id == alice[0].public_id


def test_an_explicit_offset_keeps_the_strict_sixty_second_window(alice):
    """With an offset the timestamp is an instant: the right one is accepted, one 15 min off
    (a zone shift that an offset-free timestamp would get away with) is refused."""
    india = (NOW + timedelta(seconds=30)).astimezone(timezone(timedelta(hours=5, minutes=30)))
    assert _auth(alice, india.isoformat()).public_id == alice[0].public_id
    with pytest.raises(services.AuthFailed):
        _auth(alice, (NOW + timedelta(minutes=15)).isoformat())
    with pytest.raises(services.AuthFailed):
        _auth(alice, (NOW - timedelta(seconds=61)).isoformat().replace("+00:00", "Z"))


def test_a_used_offset_free_signature_stays_used_while_it_fits_any_zone(alice, time_machine):
    """An offset-free timestamp fits another zone every 15 minutes for 28 hours: a signature
    used in Kiribati (UTC+14) now is still refused 27 hours later, when the same wall-clock
    time reads as local time 13 hours behind UTC and so looks fresh again."""
    timestamp = _local(timedelta(hours=14))
    _auth(alice, timestamp)
    time_machine.move_to(NOW + timedelta(hours=27), tick=False)
    assert services.auth_timestamp_fresh(timestamp=timestamp, now=NOW + timedelta(hours=27))
    with pytest.raises(services.Replayed):
        _auth(alice, timestamp)


def test_malformed_timestamps_are_refused(alice):
    for bad in ["yesterday", "2026-13-01T00:00:00", "12:00:00"]:
        with pytest.raises(services.AuthFailed):
            _auth(alice, bad)
