"""The ``--containers`` fixtures' logic, without Docker: settings, the variables each broker
exports (the harness's, key for key), the broker configuration (the harness's, but for
ports, addresses and paths), the container options, and cleanup."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conformance import containers
from conformance.containers import (
    BROKERS,
    ContainerError,
    KafkaContainer,
    RabbitMQContainer,
    RocketMQContainer,
    Session,
    Settings,
)

ROOT = Path(__file__).resolve().parents[1]
harness_kafka, harness_rabbitmq, harness_rocketmq = (
    containers.harness_kafka,
    containers.harness_rabbitmq,
    containers.harness_rocketmq,
)


class FakeCerts(containers.Certs):
    """Paths without running openssl (content is only read when files are copied in)."""

    def read(self, name: str) -> bytes:
        return f"<{name}>".encode()


def make(cls: type[containers.BrokerContainer], **env: str) -> Any:
    settings = Settings.from_env(env)
    return cls(settings, FakeCerts(Path("/certs"), (settings.host,)), {"nova.containers": "1"})


def _properties(lines: list[str]) -> dict[str, str]:
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


# --- settings ---------------------------------------------------------------------------------


def test_defaults_are_the_official_images_on_a_bridge_network_offset_from_the_harness_ports() -> None:
    s = Settings.from_env({})
    assert s.images == {
        "kafka": f"apache/kafka:{harness_kafka.KAFKA_VERSION}",
        "rabbitmq": "rabbitmq:4.0",
        "rocketmq": f"apache/rocketmq:{harness_rocketmq.VERSION}",
    }
    assert (s.network, s.port_offset, s.host, s.bind) == ("bridge", 5_000, "127.0.0.1", "0.0.0.0")
    assert s.rocketmq_acl


def test_images_network_offset_and_acl_come_from_the_environment() -> None:
    s = Settings.from_env({
        "NOVA_KAFKA_IMAGE": "local/k:1", "NOVA_RABBITMQ_IMAGE": "local/r:1", "NOVA_ROCKETMQ_IMAGE": "local/m:1",
        "NOVA_CONTAINERS_NETWORK": "host", "NOVA_CONTAINERS_PORT_OFFSET": "20000", "NOVA_ROCKETMQ_ACL": "0",
    })  # fmt: skip
    assert s.images == {"kafka": "local/k:1", "rabbitmq": "local/r:1", "rocketmq": "local/m:1"}
    assert (s.network, s.port_offset, s.bind, s.rocketmq_acl) == ("host", 20_000, "127.0.0.1", False)


def test_a_remote_docker_host_is_where_the_brokers_are_reached() -> None:
    assert Settings.from_env({"DOCKER_HOST": "tcp://10.1.2.3:2375"}).host == "10.1.2.3"
    assert Settings.from_env({"DOCKER_HOST": "unix:///var/run/docker.sock"}).host == "127.0.0.1"
    assert Settings.from_env({"TESTCONTAINERS_HOST_OVERRIDE": "docker.lan"}).host == "docker.lan"
    # With the host's network the brokers are on this machine, whatever DOCKER_HOST says.
    assert Settings.from_env({"DOCKER_HOST": "tcp://10.1.2.3:2375", "NOVA_CONTAINERS_NETWORK": "host"}).host == (
        "127.0.0.1"
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"NOVA_CONTAINERS_NETWORK": "overlay"}, "NOVA_CONTAINERS_NETWORK='overlay': use 'host' or 'bridge'"),
        ({"NOVA_CONTAINERS_PORT_OFFSET": "lots"}, "NOVA_CONTAINERS_PORT_OFFSET='lots' is not a whole number"),
        ({"NOVA_CONTAINERS_PORT_OFFSET": "40000"}, "puts ports outside 1-65535: use 0..39863"),
        ({"NOVA_CONTAINERS_PORT_OFFSET": "-1"}, "puts ports outside 1-65535"),
    ],
)
def test_bad_settings_say_what_to_fix(env: dict[str, str], message: str) -> None:
    with pytest.raises(ContainerError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Settings.from_env(env)


# --- the same variables as the harness ----------------------------------------------------------


def test_kafka_exports_the_harness_variables_on_the_offset_ports() -> None:
    ours, theirs = make(KafkaContainer).env(), harness_kafka.env()
    assert ours.keys() == theirs.keys() and set(ours) == set(containers.ENDPOINT_VARS["kafka"])
    assert ours["NOVA_KAFKA_BOOTSTRAP"] == "127.0.0.1:14092"
    assert ours["NOVA_KAFKA_SASL_SSL_BOOTSTRAP"] == "127.0.0.1:14096"
    assert (ours["NOVA_KAFKA_USER"], ours["NOVA_KAFKA_PASSWORD"]) == (theirs["NOVA_KAFKA_USER"],
                                                                      theirs["NOVA_KAFKA_PASSWORD"])  # fmt: skip
    # A test finds the untrusted CA next to the trusted one.
    assert Path(ours["NOVA_KAFKA_CA_FILE"]).parent == Path("/certs")


def test_rabbitmq_exports_the_harness_variables_on_the_offset_ports() -> None:
    ours, theirs = make(RabbitMQContainer).env(), harness_rabbitmq.env()
    assert ours.keys() == theirs.keys() and set(ours) == set(containers.ENDPOINT_VARS["rabbitmq"])
    assert ours["NOVA_RABBITMQ_URL"] == theirs["NOVA_RABBITMQ_URL"].replace(":5672/", ":10672/")
    assert ours["NOVA_RABBITMQ_TLS_URL"] == theirs["NOVA_RABBITMQ_TLS_URL"].replace(":5671/", ":10671/")


@pytest.mark.parametrize("acl", [True, False])
def test_rocketmq_exports_the_harness_variables_with_and_without_acl(
    acl: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(harness_rocketmq, "RUN", tmp_path)
    if acl:
        (tmp_path / "acl").write_text("1")
    theirs = harness_rocketmq.env()
    ours = make(RocketMQContainer, NOVA_ROCKETMQ_ACL="1" if acl else "0").env()
    # The admin classpath names jars on the host, for running RocketMQ's admin tool by hand.
    assert ours.keys() == theirs.keys() - {"NOVA_ROCKETMQ_ADMIN_CLASSPATH"}
    assert set(ours) <= set(containers.ENDPOINT_VARS["rocketmq"])
    assert ours["NOVA_ROCKETMQ_ENDPOINTS"] == "127.0.0.1:13081"
    assert ours["NOVA_ROCKETMQ_NAMESRV"] == "127.0.0.1:14876"
    assert {k: v for k, v in ours.items() if "KEY" in k} == {k: v for k, v in theirs.items() if "KEY" in k}


def test_no_container_port_is_a_harness_port_or_another_brokers() -> None:
    harness = {*harness_kafka.PORTS.values(), harness_rabbitmq.PORT, harness_rabbitmq.TLS_PORT,
               harness_rabbitmq.DIST_PORT, 4369, harness_rocketmq.NAMESRV_PORT, harness_rocketmq.BROKER_PORT,
               harness_rocketmq.BROKER_PORT - 2, harness_rocketmq.BROKER_PORT + 1, harness_rocketmq.GRPC_PORT,
               harness_rocketmq.REMOTING_PORT}  # fmt: skip
    ours = [port for cls in BROKERS.values() for port in make(cls).ports.values()]
    assert len(ours) == len(set(ours))
    assert not harness & set(ours)
    assert max(ours) < 32_768  # below the ephemeral range: no outgoing connection holds one


# --- the same broker configuration as the harness --------------------------------------------


def test_kafka_is_configured_as_the_harness_configures_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RUN", "DATA", "CERTS", "CONFIG", "LOG4J_CONFIG"):
        monkeypatch.setattr(harness_kafka, name, tmp_path / name.lower())
    harness_kafka._write_config()
    theirs = _properties((tmp_path / "config").read_text().splitlines())
    ours = _properties(make(KafkaContainer, NOVA_CONTAINERS_NETWORK="host").server_properties())
    where = {"listeners", "advertised.listeners", "controller.quorum.bootstrap.servers", "log.dirs",
             "ssl.keystore.location", "ssl.truststore.location"}  # fmt: skip
    assert ours.keys() == theirs.keys()
    assert {k: v for k, v in ours.items() if k not in where} == {k: v for k, v in theirs.items() if k not in where}
    for key in ("listeners", "advertised.listeners"):
        assert ours[key] == re.sub(r":(\d+)", lambda m: f":{int(m[1]) + 5_000}", theirs[key])


def test_kafka_listens_on_every_interface_of_its_own_network_but_advertises_the_docker_host() -> None:
    props = _properties(make(KafkaContainer, DOCKER_HOST="tcp://10.1.2.3:2375").server_properties())
    assert props["listeners"].startswith("PLAINTEXT://0.0.0.0:14092,CONTROLLER://127.0.0.1:14093,")
    assert props["advertised.listeners"].startswith("PLAINTEXT://10.1.2.3:14092,SASL_PLAINTEXT://10.1.2.3:14094")


def test_rabbitmq_is_configured_as_the_harness_configures_it() -> None:
    def settings(text: str) -> dict[str, str]:
        pairs = (line.split(" = ", 1) for line in text.splitlines() if " = " in line and not line.startswith("#"))
        return {k: v for k, v in pairs if not k.startswith("log.")}

    theirs = settings(harness_rabbitmq.CONF)
    ours = settings(make(RabbitMQContainer, NOVA_CONTAINERS_NETWORK="host").config())
    assert ours.keys() == theirs.keys()
    different = {k for k in ours if ours[k] != theirs[k]}
    assert different == {"listeners.tcp.default", "listeners.ssl.default", "ssl_options.cacertfile",
                         "ssl_options.certfile", "ssl_options.keyfile", "distribution.listener.port_range.min",
                         "distribution.listener.port_range.max"}  # fmt: skip
    assert ours["listeners.tcp.default"] == "127.0.0.1:10672"


@pytest.mark.parametrize("acl", [True, False])
def test_rocketmq_is_configured_as_the_harness_configures_it(
    acl: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(harness_rocketmq, "RUN", tmp_path)
    if acl:
        (tmp_path / "acl").write_text("1")
    _, broker_conf, proxy_json = harness_rocketmq._write_configs()
    rocket = make(RocketMQContainer, NOVA_CONTAINERS_NETWORK="host", NOVA_ROCKETMQ_ACL="1" if acl else "0")
    theirs, ours = _properties(broker_conf.read_text().splitlines()), _properties(rocket.broker_conf())
    where = {"namesrvAddr", "listenPort", "storePathRootDir", "storePathCommitLog"}
    assert ours.keys() == theirs.keys()
    assert {k: v for k, v in ours.items() if k not in where} == {k: v for k, v in theirs.items() if k not in where}
    assert (ours["namesrvAddr"], ours["listenPort"]) == ("127.0.0.1:14876", "15911")
    their_proxy, our_proxy = json.loads(proxy_json.read_text()), rocket.proxy_config()
    ports = {"namesrvAddr", "grpcServerPort", "remotingListenPort"}
    assert {k: v for k, v in our_proxy.items() if k not in ports} == {
        k: v for k, v in their_proxy.items() if k not in ports
    }
    assert (our_proxy["grpcServerPort"], our_proxy["remotingListenPort"]) == (13081, 13080)


# --- container options --------------------------------------------------------------------------


@pytest.mark.parametrize("cls", list(BROKERS.values()))
def test_host_network_publishes_nothing_and_a_bridge_publishes_each_client_port_as_itself(
    cls: type[containers.BrokerContainer],
) -> None:
    host = make(cls, NOVA_CONTAINERS_NETWORK="host").options()
    assert host["kwargs"]["network_mode"] == "host" and host["ports"] == {}
    bridge = make(cls).options()
    assert "network_mode" not in bridge["kwargs"]
    assert bridge["ports"] and all(f"{port}/tcp" == key for key, port in bridge["ports"].items())
    assert bridge["kwargs"]["labels"] == {"nova.containers": "1"}


def test_kafka_and_rocketmq_run_their_start_script_rabbitmq_keeps_the_images_entrypoint() -> None:
    for cls in (KafkaContainer, RocketMQContainer):
        options = make(cls).options()
        assert options["kwargs"]["entrypoint"] == ["bash", "/nova/start.sh"]
        assert "/nova/start.sh" in options["files"]
    assert "entrypoint" not in make(RabbitMQContainer).options()["kwargs"]


def test_rabbitmq_loads_only_its_own_config_and_no_plugins() -> None:
    options = make(RabbitMQContainer).options()
    assert options["env"]["RABBITMQ_CONFIG_FILE"] in options["files"]
    assert options["env"]["RABBITMQ_ENABLED_PLUGINS_FILE"] in options["files"]
    assert options["files"][options["env"]["RABBITMQ_ENABLED_PLUGINS_FILE"]] == b"[].\n"
    assert options["env"]["RABBITMQ_DIST_PORT"] == "30672" and options["env"]["ERL_EPMD_PORT"] == "9369"


def test_secrets_stay_out_of_the_container_environment_and_command() -> None:
    for cls in BROKERS.values():
        options = make(cls).options()
        shown = json.dumps({"env": options["env"], "kwargs": options["kwargs"]})
        for secret in (harness_kafka.PASSWORD, harness_rabbitmq.PASSWORD, harness_rocketmq.APP_USER[1],
                       harness_rocketmq.ADMIN_USER[1]):  # fmt: skip
            assert secret not in shown


# --- certificates ---------------------------------------------------------------------------------


def test_certificates_name_the_docker_host_and_put_the_untrusted_ca_next_to_the_trusted_one(tmp_path: Path) -> None:
    certs = containers.Certs(tmp_path / "certs", ("10.1.2.3", "docker.lan"))
    certs.make()
    for name in ("ca.pem", "other-ca.pem", "client.pem", "client.key", "server.pem", "server.key"):
        assert certs.path(name).exists()
    text = subprocess.run(["openssl", "x509", "-in", str(certs.path("server.pem")), "-noout", "-text"],
                          capture_output=True, text=True, check=True).stdout  # fmt: skip
    for name in ("IP Address:127.0.0.1", "DNS:localhost", "IP Address:10.1.2.3", "DNS:docker.lan"):
        assert name in text
    keystore = certs.path("server.keystore.pem").read_text()
    assert keystore.startswith("-----BEGIN PRIVATE KEY-----") and keystore.count("BEGIN CERTIFICATE") == 2


# --- cleanup ----------------------------------------------------------------------------------------


class FakeContainer:
    def __init__(self, labels: dict[str, str]) -> None:
        self.labels = labels
        self.removed = False

    def remove(self, force: bool, v: bool) -> None:
        assert force and v
        self.removed = True


class FakeDocker:
    """Stands in for the Docker engine's container list: only label filters matter here."""

    def __init__(self, containers: list[FakeContainer]) -> None:
        self.all = containers
        self.containers = self

    def list(self, all: bool, filters: dict[str, str]) -> list[FakeContainer]:  # noqa: A002 - docker-py's name
        assert all
        key, _, value = filters["label"].partition("=")
        return [c for c in self.all if key in c.labels and (not value or c.labels[key] == value)]


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_run_removes_containers_left_by_killed_runs_on_this_machine_only() -> None:
    here, dead = socket.gethostname(), _dead_pid()

    def labelled(pid: int, host: str = here) -> FakeContainer:
        return FakeContainer({"nova.containers": "1", "nova.containers.pid": str(pid), "nova.containers.host": host})

    orphan, alive, elsewhere = labelled(dead), labelled(os.getpid()), labelled(dead, "other")
    foreign = FakeContainer({})
    docker = FakeDocker([orphan, alive, elsewhere, foreign])
    session = Session(Settings.from_env({}), docker_client=lambda: docker)
    try:
        session.remove_orphans()
    finally:
        session.close()
    assert orphan.removed
    assert not (alive.removed or elsewhere.removed or foreign.removed)


def test_closing_a_run_removes_its_containers_and_its_files_and_is_idempotent() -> None:
    docker = FakeDocker([])
    session = Session(Settings.from_env({}), docker_client=lambda: docker)
    mine, other = FakeContainer(dict(session.labels)), FakeContainer({**session.labels, "nova.containers.session": "x"})
    docker.all += [mine, other]
    assert session.workdir.is_dir()
    session.close()
    session.close()
    assert mine.removed and not other.removed
    assert not session.workdir.exists()


# --- the pytest options -------------------------------------------------------------------------------


def _pytest(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q",
         "tests/test_public_api.py", *args],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, **env}, check=False,
    )  # fmt: skip


def test_an_unknown_nova_brokers_value_is_a_usage_error() -> None:
    result = _pytest(NOVA_BROKERS="docker")
    assert result.returncode == 4
    assert "NOVA_BROKERS='docker': use one of harness, containers" in result.stderr


@pytest.mark.parametrize("how", [("--containers",), ()])
def test_containers_without_a_docker_engine_stop_the_run_and_say_what_to_do(how: tuple[str, ...]) -> None:
    env = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    if not how:
        env["NOVA_BROKERS"] = "containers"
    result = _pytest("--broker", "kafka", *how, **env)
    assert result.returncode == 4
    assert "--containers needs a running Docker engine" in result.stderr
    assert "python tools/brokers.py up" in result.stderr


def test_a_port_already_in_use_stops_the_start_before_any_container_is_made() -> None:
    kafka = make(KafkaContainer, NOVA_CONTAINERS_NETWORK="host", NOVA_CONTAINERS_PORT_OFFSET="30000")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", kafka.ports["CONTROLLER"]))  # not published, but the host's on its network
        listener.listen()
        with pytest.raises(ContainerError, match=r"127\.0\.0\.1:39093 already answer.*NOVA_CONTAINERS_PORT_OFFSET"):
            kafka.start()
    assert kafka.container is None
