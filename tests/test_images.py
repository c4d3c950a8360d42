"""tools/images.py without Docker or debootstrap: what goes into an image and when it is rebuilt."""

from __future__ import annotations

import importlib.util
import io
import sys
import tarfile
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("nova_tools_images", ROOT / "tools" / "images.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


images = _load()


def _base_tar(tmp_path: Path) -> Path:
    """A tiny stand-in for the debootstrapped root filesystem."""
    path = tmp_path / "base.tar"
    with tarfile.open(path, "w") as tar:
        for name in (".", "./etc", "./opt", "./var", "./var/log", "./var/log/rabbitmq"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name, text in (("passwd", "root:x:0:0:root:/root:/bin/bash\n"), ("group", "root:x:0:\n"),
                           ("shadow", "root:*:19000:0:99999:7:::\n"), ("gshadow", "root:*::\n"),
                           ("hostname", "base\n")):  # fmt: skip
            data = text.encode()
            info = tarfile.TarInfo(f"./etc/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _spec(tmp_path: Path) -> object:
    jars = tmp_path / "libs"
    jars.mkdir(exist_ok=True)
    (jars / "a-1.jar").write_bytes(b"jar a")
    (jars / ".complete").write_text("marker")
    return images.ImageSpec(
        name="kafka",
        tag="nova-local/test:1",
        packages=("openjdk-21-jre-headless",),
        user=images.User("appuser", 1000, "/home/appuser"),
        files={
            "/opt/app/bin/run.sh": (b"#!/bin/bash\n", 0o755),
            "/etc/hostname": (b"image\n", 0o644),
            "/var/log/rabbitmq/": (b"", 0o1777),
        },
        trees={jars: "/opt/app/libs"},
    )


def _stream(spec: object, base: Path) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    out: dict[str, tuple[tarfile.TarInfo, bytes]] = {}
    with tarfile.open(base) as tar:
        for info, data in images._members(spec, tar):
            assert info.name not in out, f"{info.name} twice in the image"
            content = b""
            if data is not None:
                content = data.read()
                data.close()
            out[info.name] = (info, content)
    return out


def test_the_image_is_the_base_plus_the_user_its_files_and_the_jars(tmp_path: Path) -> None:
    members = _stream(_spec(tmp_path), _base_tar(tmp_path))
    assert members["./etc/passwd"][1].decode().endswith("appuser:x:1000:1000::/home/appuser:/bin/bash\n")
    assert members["./etc/group"][1].decode().endswith("appuser:x:1000:\n")
    assert "appuser:" in members["./etc/shadow"][1].decode() and "appuser:" in members["./etc/gshadow"][1].decode()
    assert members["./etc/hostname"][1] == b"image\n"  # a file of the spec replaces the base's
    run, data = members["./opt/app/bin/run.sh"]
    assert (data, run.mode, run.uid) == (b"#!/bin/bash\n", 0o755, 1000)
    assert members["./opt/app/libs/a-1.jar"][1] == b"jar a"
    assert "./opt/app/libs/.complete" not in members  # the harness's download marker stays out
    assert members["./var/log/rabbitmq"][0].mode == 0o1777
    # Parents the base has keep the base's owner and mode; new ones belong to the user.
    assert (members["./opt"][0].uid, members["./etc"][0].uid) == (0, 0)
    assert members["./opt/app"][0].uid == 1000 and members["./home/appuser"][0].isdir()


def test_equal_inputs_give_equal_keys_and_any_change_a_new_one(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    key = images.inputs_key(spec)
    assert images.inputs_key(_spec(tmp_path)) == key
    changed_file = replace(spec, files={**spec.files, "/opt/app/bin/run.sh": (b"#!/bin/sh\n", 0o755)})
    assert images.inputs_key(changed_file) != key
    assert images.inputs_key(replace(spec, packages=("openjdk-17-jre-headless",))) != key
    assert images.inputs_key(replace(spec, changes=("USER root",))) != key
    (tmp_path / "libs" / "b-1.jar").write_bytes(b"jar b")
    assert images.inputs_key(spec) != key


def test_each_broker_image_looks_like_the_official_one() -> None:
    kafka, rabbitmq, rocketmq = (images.IMAGES[name]() for name in ("kafka", "rabbitmq", "rocketmq"))
    assert {"/opt/kafka/bin/kafka-server-start.sh", "/opt/kafka/bin/kafka-storage.sh"} <= kafka.files.keys()
    assert kafka.user.name == "appuser" and 'CMD ["/etc/kafka/docker/run"]' in kafka.changes
    assert any(c.startswith("ENV PATH=/usr/lib/rabbitmq/bin:") for c in rabbitmq.changes)
    assert "USER rabbitmq" in rabbitmq.changes and rabbitmq.packages == ("rabbitmq-server",)
    home = f"/home/rocketmq/rocketmq-{images.harness_rocketmq.VERSION}"
    assert f"ENV ROCKETMQ_HOME={home}" in rocketmq.changes and rocketmq.user.uid == 3000
    assert list(rocketmq.trees.values()) == [f"{home}/lib"]


@pytest.mark.parametrize("argv", [[], ["build"], ["push", "kafka"], ["build", "redis"]])
def test_bad_arguments_print_the_usage(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert images.main(argv) == 2
    assert "python tools/images.py build" in capsys.readouterr().err


def test_tag_names_the_image_without_building(capsys: pytest.CaptureFixture[str]) -> None:
    assert images.main(["tag", "kafka"]) == 0
    assert capsys.readouterr().out == f"nova-local/kafka:{images.harness_kafka.KAFKA_VERSION}\n"
