"""Who the supervisor and its processes are on the broker: the logins it hands out and uses.

Each process logs in as ``{deployment}.{process}`` with a password derived from the deployment's
secret; the supervisor probes as ``{deployment}.supervisor``, tests watch as
``{deployment}.observer`` (``_deploy.acl``). The supervisor restores a consumer's subscriptions
and ends a retired replica's session as *that consumer*: Mosquitto checks a session's messages
against the user who last connected it.

Logins go to Mosquitto (ours, which enforces them) and to an external broker (which should:
``archipel broker-auth`` writes its files). rumqttd checks none, so none is sent there.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import TypedDict

from .._events.mqtt import broker_tls
from .._security.keyring import mqtt_username
from .._security.secrets import mqtt_password
from .._security.tls import TlsFiles
from .acl import observer_username, supervisor_username


def mqtt_context(url: str, tls: TlsFiles) -> ssl.SSLContext | None:
    """What an ``mqtts://`` connection verifies the broker with: the CA, else the system's store;
    None for ``mqtt://``."""
    if not broker_tls(url):
        return None
    return tls.client_context() or ssl.create_default_context()


class Login(TypedDict):
    username: str | None
    password: str | None
    tls: ssl.SSLContext | None


@dataclass(frozen=True)
class BrokerLogins:
    deployment: str
    secret: bytes
    url: str
    tls: TlsFiles
    enforced: bool  # False on rumqttd: no logins at all

    def context(self) -> ssl.SSLContext | None:
        return mqtt_context(self.url, self.tls)

    def user(self, username: str) -> Login:
        if not self.enforced:
            return Login(username=None, password=None, tls=self.context())
        return Login(username=username, password=mqtt_password(self.secret, username), tls=self.context())

    def process(self, name: str) -> Login:
        return self.user(mqtt_username(self.deployment, name))

    def supervisor(self) -> Login:
        return self.user(supervisor_username(self.deployment))

    def observer(self) -> Login:
        return self.user(observer_username(self.deployment))
