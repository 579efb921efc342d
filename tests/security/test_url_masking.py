"""A ``NATS_URL`` with ``user:password@`` in it: the password never shows in ``repr(Settings)``, ``str``, or a
log line that formats the settings, while the operator still connects with the real URL."""

from __future__ import annotations

import logging
import secrets

import pytest

from branch_operator.clients.nats_bus import connect_options
from branch_operator.config import Settings, mask_url

PASSWORD = "urlpw-" + secrets.token_hex(12)
TOKEN = "urltok-" + secrets.token_hex(12)


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("NATS_URL", f"nats://oms-operator:{PASSWORD}@nats-0.nats:4222,tls://{TOKEN}@nats-1.nats:4222")
    return Settings()


def test_repr_and_str_mask_the_password_but_keep_user_and_host(settings: Settings) -> None:
    for text in (repr(settings), str(settings), f"{settings}", f"{settings!r}"):
        assert PASSWORD not in text and TOKEN not in text, text
        assert "nats://oms-operator:***@nats-0.nats:4222,tls://***@nats-1.nats:4222" in text


def test_log_lines_formatting_settings_are_clean(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("branch_operator.test")
    with caplog.at_level(logging.DEBUG):
        log.debug("settings: %s", settings)
        log.info("settings: %r", settings)
    assert caplog.records and all(PASSWORD not in r.getMessage() and TOKEN not in r.getMessage()
                                  for r in caplog.records)


def test_the_real_url_is_kept_for_connecting(settings: Settings) -> None:
    assert PASSWORD in settings.nats_url
    assert connect_options(settings)["servers"] == [
        f"nats://oms-operator:{PASSWORD}@nats-0.nats:4222", f"tls://{TOKEN}@nats-1.nats:4222"]


@pytest.mark.parametrize(("url", "masked"), [
    ("nats://nats:4222", "nats://nats:4222"),
    ("nats://u:p%40ss@h:4222", "nats://u:***@h:4222"),
    ("nats://u:p@ss@h:4222/x", "nats://u:***@h:4222/x"),  # an unencoded @ in the password
    ("nats://:pw@h", "nats://:***@h"),
    ("nats://tok@h", "nats://***@h"),  # a user with no password is a token to NATS
    ("u:pw@h:4222", "u:***@h:4222"),  # no scheme: nats-py still reads credentials
    ("wss://u:pw@[::1]:443", "wss://u:***@[::1]:443"),
    ("nats://h/a@b", "nats://h/a@b"),  # an @ after the host is not userinfo
])
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked
