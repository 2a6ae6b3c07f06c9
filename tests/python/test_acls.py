"""ACLs and SCRAM users through Kafka's admin APIs (issue 14, acceptance 1),
with confluent-kafka: a super user creates topics, a user (with
AlterUserScramCredentials) and ACLs (CreateAcls) with the AdminClient; the
user produces and consumes in a group it is allowed over SASL_SSL with
SCRAM-SHA-512, SCRAM-SHA-256 and PLAIN, and a certificate principal does
the same over mTLS; each is refused promptly, with Kafka's error codes, on a
topic and a group it is not allowed; DeleteAcls takes the access away."""

import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialDeletion,
    UserScramCredentialUpsertion,
)

from conftest import Pki, _run_broker, add_user, free_port, sasl_conf

TIMEOUT = 30
CLIENT_CN = "svc-orders"


@pytest.fixture
def acl_broker(request, tmp_path):
    """SASL_SSL (SCRAM-SHA-512/256, PLAIN) and SSL (client certificates
    requested) listeners, the ACL authorizer, super user `admin`."""
    data = tmp_path / "data"
    pki = Pki(tmp_path / "pki")
    add_user(data, "admin", "admin-secret")
    sasl, ssl = free_port(), free_port()
    listeners = f"SASL_SSL://127.0.0.1:{sasl},SSL://127.0.0.1:{ssl}"
    extra = [
        "--tls-cert", str(pki.cert), "--tls-key", str(pki.key),
        "--tls-client-ca", str(pki.ca), "--tls-client-auth", "requested",
        "--sasl-mechanisms", "SCRAM-SHA-512,SCRAM-SHA-256,PLAIN",
        "--authorizer", "acl", "--super-users", "User:admin",
    ]
    for broker in _run_broker(request, data, sasl, extra, listeners):
        broker.sasl_ssl = f"127.0.0.1:{sasl}"
        broker.ssl = f"127.0.0.1:{ssl}"
        broker.pki = pki
        yield broker


def mtls(broker, cert, key):
    return {
        "bootstrap.servers": broker.ssl,
        "security.protocol": "SSL",
        "ssl.ca.location": str(broker.pki.ca),
        "ssl.certificate.location": str(cert),
        "ssl.key.location": str(key),
        "broker.address.family": "v4",
    }


def allow(resource_type, name, principal, operation, pattern=ResourcePatternType.LITERAL):
    return AclBinding(resource_type, name, pattern, principal, "*", operation,
                      AclPermissionType.ALLOW)


def wait_all(futures):
    return {k: f.result(TIMEOUT) for k, f in futures.items()}


def produce(conf, topic, n):
    """Produce n records; returns the delivery errors (None for each success)."""
    errors = []
    p = Producer({**conf, "acks": "all", "message.timeout.ms": 20000})
    for i in range(n):
        p.produce(topic, value=f"v{i}", on_delivery=lambda err, _m: errors.append(err))
    p.flush(TIMEOUT)
    return errors


def consume(conf, topic, group, n):
    """(values read, first error code) within the timeout."""
    c = Consumer({**conf, "group.id": group, "auto.offset.reset": "earliest"})
    c.subscribe([topic])
    seen, error = [], None
    deadline = time.monotonic() + TIMEOUT
    while len(seen) < n and error is None and time.monotonic() < deadline:
        m = c.poll(1.0)
        if m is None:
            continue
        if m.error():
            error = m.error().code()
        else:
            seen.append(m.value().decode())
    c.close()
    return seen, error


def kafka_python_describe_acls_is_refused(broker):
    """kafka-python's admin client, as alice: DescribeAcls raises
    ClusterAuthorizationFailedError."""
    import ssl

    from kafka.admin import (ACLFilter, ACLOperation, ACLPermissionType,
                             ACLResourcePatternType, KafkaAdminClient,
                             ResourcePatternFilter)
    from kafka.admin import ResourceType as KpResourceType
    from kafka.errors import ClusterAuthorizationFailedError

    admin = KafkaAdminClient(
        bootstrap_servers=broker.sasl_ssl, security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512", sasl_plain_username="alice",
        sasl_plain_password="alice-secret",
        ssl_context=ssl.create_default_context(cafile=str(broker.pki.ca)))
    try:
        with pytest.raises(ClusterAuthorizationFailedError):
            admin.describe_acls(ACLFilter(
                principal=None, host="*", operation=ACLOperation.ANY,
                permission_type=ACLPermissionType.ANY,
                resource_pattern=ResourcePatternFilter(
                    KpResourceType.ANY, None, ACLResourcePatternType.ANY)))
    finally:
        admin.close()


def test_admin_apis_grant_and_take_away_access(acl_broker):
    admin = AdminClient(sasl_conf(acl_broker, "SCRAM-SHA-512", "admin", "admin-secret"))
    run = uuid.uuid4().hex[:6]
    orders, secret = f"orders-{run}", f"secret-{run}"
    wait_all(admin.create_topics([NewTopic(orders, 2), NewTopic(secret, 1)]))

    # A user made through the admin API, with both SCRAM mechanisms.
    wait_all(admin.alter_user_scram_credentials([
        UserScramCredentialUpsertion(
            "alice", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192), b"alice-secret"),
        UserScramCredentialUpsertion(
            "alice", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 4096), b"alice-secret"),
    ]))
    described = admin.describe_user_scram_credentials(["alice"])["alice"].result(TIMEOUT)
    assert {(i.mechanism, i.iterations) for i in described.scram_credential_infos} == {
        (ScramMechanism.SCRAM_SHA_512, 8192), (ScramMechanism.SCRAM_SHA_256, 4096)}

    cert, key = acl_broker.pki.client(CLIENT_CN)
    grants = []
    for principal in ("User:alice", f"User:CN={CLIENT_CN}"):
        grants += [
            allow(ResourceType.TOPIC, orders, principal, AclOperation.WRITE),
            allow(ResourceType.TOPIC, orders, principal, AclOperation.READ),
            allow(ResourceType.GROUP, "app-", principal, AclOperation.READ,
                  ResourcePatternType.PREFIXED),
        ]
    wait_all(admin.create_acls(grants))
    everything = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
                                  AclOperation.ANY, AclPermissionType.ANY)
    assert len(admin.describe_acls(everything).result(TIMEOUT)) == 6

    clients = {
        "scram-512": sasl_conf(acl_broker, "SCRAM-SHA-512", "alice", "alice-secret"),
        "scram-256": sasl_conf(acl_broker, "SCRAM-SHA-256", "alice", "alice-secret"),
        "plain": sasl_conf(acl_broker, "PLAIN", "alice", "alice-secret"),
        "mtls": mtls(acl_broker, cert, key),
    }
    for name, conf in clients.items():
        assert produce(conf, orders, 20) == [None] * 20, name
        seen, error = consume(conf, orders, f"app-{name}", 20 * (list(clients).index(name) + 1))
        assert error is None and len(seen) >= 20, (name, error, len(seen))

        started = time.monotonic()
        errors = produce(conf, secret, 1)
        assert [e.code() for e in errors] == [KafkaError.TOPIC_AUTHORIZATION_FAILED], name
        _, error = consume(conf, orders, f"other-{name}", 1)
        assert error == KafkaError.GROUP_AUTHORIZATION_FAILED, (name, error)
        assert time.monotonic() - started < 20, f"{name}: refusals took too long"

    # A user may not manage ACLs or users. (confluent-kafka 2.16.1 returns
    # an empty list from describe_acls when the answer is
    # CLUSTER_AUTHORIZATION_FAILED; kafka-python raises, below.)
    alice_admin = AdminClient(clients["scram-512"])
    assert alice_admin.describe_acls(everything).result(TIMEOUT) == []
    with pytest.raises(KafkaException) as refused:
        wait_all(alice_admin.create_acls([
            allow(ResourceType.TOPIC, secret, "User:alice", AclOperation.READ)]))
    assert refused.value.args[0].code() == KafkaError.CLUSTER_AUTHORIZATION_FAILED
    with pytest.raises(KafkaException) as refused:
        wait_all(alice_admin.alter_user_scram_credentials([UserScramCredentialUpsertion(
            "mallory", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096), b"x")]))
    assert refused.value.args[0].code() == KafkaError.CLUSTER_AUTHORIZATION_FAILED
    kafka_python_describe_acls_is_refused(acl_broker)
    # Listings leave out what she may not describe.
    assert set(alice_admin.list_topics(timeout=TIMEOUT).topics) == {orders}

    # Deleting alice's grants takes her access away (the certificate
    # principal keeps its own).
    deleted = admin.delete_acls([AclBindingFilter(
        ResourceType.ANY, None, ResourcePatternType.ANY, "User:alice", None,
        AclOperation.ANY, AclPermissionType.ANY)])
    assert len(list(deleted.values())[0].result(TIMEOUT)) == 3
    errors = produce(clients["scram-512"], orders, 1)
    assert [e.code() for e in errors] == [KafkaError.TOPIC_AUTHORIZATION_FAILED]
    assert produce(clients["mtls"], orders, 1) == [None]

    # And deleting the user stops the login.
    wait_all(admin.alter_user_scram_credentials([
        UserScramCredentialDeletion("alice", ScramMechanism.SCRAM_SHA_512),
        UserScramCredentialDeletion("alice", ScramMechanism.SCRAM_SHA_256),
    ]))
    with pytest.raises(KafkaException):
        AdminClient(clients["scram-512"]).list_topics(timeout=5)


def test_transactions_need_the_transactional_id(acl_broker):
    """A transactional producer needs WRITE on its transactional id (and on
    the topic); consume-transform-produce also needs READ on the group.
    Without the id it is refused at init_transactions with
    TRANSACTIONAL_ID_AUTHORIZATION_FAILED; with it, a transaction commits."""
    admin = AdminClient(sasl_conf(acl_broker, "SCRAM-SHA-512", "admin", "admin-secret"))
    run = uuid.uuid4().hex[:6]
    topic, txn_id = f"payments-{run}", f"payments-app-{run}"
    wait_all(admin.create_topics([NewTopic(topic, 1)]))
    wait_all(admin.alter_user_scram_credentials([UserScramCredentialUpsertion(
        "bob", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096), b"bob-secret")]))
    wait_all(admin.create_acls([
        allow(ResourceType.TOPIC, topic, "User:bob", AclOperation.WRITE),
        allow(ResourceType.TOPIC, topic, "User:bob", AclOperation.READ),
    ]))
    bob = sasl_conf(acl_broker, "SCRAM-SHA-512", "bob", "bob-secret")

    refused = Producer({**bob, "transactional.id": txn_id})
    with pytest.raises(KafkaException) as raised:
        refused.init_transactions(TIMEOUT)
    assert raised.value.args[0].code() == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED

    wait_all(admin.create_acls([
        allow(ResourceType.TRANSACTIONAL_ID, txn_id, "User:bob", AclOperation.WRITE)]))
    # ACLs reach the broker's cache within its refresh (2 s).
    deadline = time.monotonic() + TIMEOUT
    while True:
        producer = Producer({**bob, "transactional.id": txn_id})
        try:
            producer.init_transactions(TIMEOUT)
            break
        except KafkaException as e:
            code = e.args[0].code()
            assert code == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED, e
            assert time.monotonic() < deadline, "the grant never took effect"
            time.sleep(0.5)
    producer.begin_transaction()
    producer.produce(topic, b"paid")
    producer.commit_transaction(TIMEOUT)
    seen, error = consume({**bob, "isolation.level": "read_committed"}, topic, "app-bob", 1)
    assert error == KafkaError.GROUP_AUTHORIZATION_FAILED, "no READ on the group yet"
    wait_all(admin.create_acls([
        allow(ResourceType.GROUP, "app-bob", "User:bob", AclOperation.READ)]))
    deadline = time.monotonic() + TIMEOUT
    while True:
        seen, error = consume({**bob, "isolation.level": "read_committed"}, topic, "app-bob", 1)
        if error is None:
            break
        assert time.monotonic() < deadline, f"the group grant never took effect: {error}"
        time.sleep(0.5)
    assert seen == ["paid"], seen
