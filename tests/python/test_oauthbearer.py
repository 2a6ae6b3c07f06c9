"""SASL/OAUTHBEARER (issue 14, acceptance 3) with confluent-kafka: tokens
signed by a test key published in a JWKS file are accepted, and the
principal (`User:<sub>`) is what ACLs see; an expired token, a token for
another audience, one from another issuer and one signed by a key not in
the JWKS are refused promptly; librdkafka's unsigned test tokens are
refused too."""

import json
import time
import uuid

import jwt
import pytest
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from conftest import Pki, _run_broker, add_user, free_port

TIMEOUT = 30
ISSUER = "https://idp.test"
AUDIENCE = "tributary"


class Idp:
    """A test identity provider: an EC P-256 key whose public half is in a
    JWKS file."""

    def __init__(self, directory, kid="test-key"):
        self.kid = kid
        self.key = ec.generate_private_key(ec.SECP256R1())
        public = json.loads(ECAlgorithm.to_jwk(self.key.public_key()))
        public.update({"kid": kid, "use": "sig", "alg": "ES256"})
        self.jwks = directory / "jwks.json"
        self.jwks.write_text(json.dumps({"keys": [public]}))

    def token(self, sub="svc-orders", lifetime=600, aud=AUDIENCE, iss=ISSUER, key=None):
        now = int(time.time())
        claims = {"sub": sub, "iss": iss, "aud": aud, "iat": now, "exp": now + lifetime}
        return jwt.encode(claims, key or self.key, algorithm="ES256",
                          headers={"kid": self.kid})


@pytest.fixture
def oauth_broker(request, tmp_path):
    """A SASL_SSL listener offering OAUTHBEARER (and SCRAM for the admin),
    the ACL authorizer, super user `admin`."""
    data = tmp_path / "data"
    pki = Pki(tmp_path / "pki")
    idp = Idp(tmp_path)
    add_user(data, "admin", "admin-secret")
    port = free_port()
    extra = [
        "--tls-cert", str(pki.cert), "--tls-key", str(pki.key),
        "--sasl-mechanisms", "OAUTHBEARER,SCRAM-SHA-512",
        "--sasl-oauthbearer-jwks", str(idp.jwks),
        "--sasl-oauthbearer-issuer", ISSUER,
        "--sasl-oauthbearer-audience", AUDIENCE,
        "--authorizer", "acl", "--super-users", "User:admin,User:svc-admin",
    ]
    for broker in _run_broker(request, data, port, extra, f"SASL_SSL://127.0.0.1:{port}"):
        broker.pki = pki
        broker.idp = idp
        yield broker


def oauth_conf(broker, token):
    """librdkafka with a fixed token from oauth_cb."""
    return {
        "bootstrap.servers": broker.bootstrap,
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "OAUTHBEARER",
        "ssl.ca.location": str(broker.pki.ca),
        "broker.address.family": "v4",
        "oauth_cb": lambda _config: (token, time.time() + 300),
    }


def refused(conf):
    """The broker refuses the login: librdkafka reports an authentication
    error (error_cb) and serves nothing. Returns how long the error took."""
    errors = []
    started = time.monotonic()
    client = AdminClient({**conf, "error_cb": lambda e: errors.append((time.monotonic(), e))})
    with pytest.raises(KafkaException):
        client.list_topics(timeout=3)
    deadline = time.monotonic() + 10
    while not errors and time.monotonic() < deadline:
        client.poll(0.2)
    auth = [t for t, e in errors if e.code() == KafkaError._AUTHENTICATION]
    assert auth, f"no authentication error reported: {[e for _, e in errors]}"
    return auth[0] - started


def test_signed_tokens_are_accepted_and_bad_ones_refused(oauth_broker):
    idp = oauth_broker.idp
    topic = f"oauth-{uuid.uuid4().hex[:6]}"
    # A super user by token: creates the topic.
    admin = AdminClient(oauth_conf(oauth_broker, idp.token(sub="svc-admin")))
    admin.create_topics([NewTopic(topic, 1)])[topic].result(TIMEOUT)
    assert topic in admin.list_topics(timeout=TIMEOUT).topics

    # A user by token is authenticated as User:<sub>: with no grant it
    # sees nothing (authenticated, then authorized by its principal).
    user = AdminClient(oauth_conf(oauth_broker, idp.token(sub="svc-orders")))
    assert topic not in user.list_topics(timeout=TIMEOUT).topics
    errors = []
    p = Producer({**oauth_conf(oauth_broker, idp.token(sub="svc-orders")),
                  "message.timeout.ms": 15000})
    p.produce(topic, b"v", on_delivery=lambda err, _m: errors.append(err))
    p.flush(TIMEOUT)
    assert [e.code() for e in errors] == [29], errors  # TOPIC_AUTHORIZATION_FAILED

    other = ec.generate_private_key(ec.SECP256R1())
    bad = {
        "expired": idp.token(lifetime=-300),
        "wrong audience": idp.token(aud="someone-else"),
        "wrong issuer": idp.token(iss="https://evil.test"),
        "wrong signature": idp.token(key=other),
    }
    for what, token in bad.items():
        took = refused(oauth_conf(oauth_broker, token))
        assert took < 5, f"{what}: refusal took {took:.1f}s"

    # librdkafka's built-in unsecured JWT (alg none) is refused.
    unsigned = {
        "bootstrap.servers": oauth_broker.bootstrap,
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "OAUTHBEARER",
        "ssl.ca.location": str(oauth_broker.pki.ca),
        "broker.address.family": "v4",
        "enable.sasl.oauthbearer.unsecure.jwt": True,
        "sasl.oauthbearer.config": "principal=svc-admin",
    }
    refused(unsigned)

    # The good token still works after all those refusals.
    assert topic in admin.list_topics(timeout=TIMEOUT).topics
