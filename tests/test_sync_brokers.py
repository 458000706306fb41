"""[sync].brokers: several broker nodes; the old single broker_host/broker_port stays valid."""

from __future__ import annotations

import pytest

from common.config import ConfigError, load_config
from tests.mqtt_env import TERMINAL_SYNC_TOML


def config(tmp_path, sync_lines: str, *, single: bool = True):
    text = TERMINAL_SYNC_TOML.format(
        tid="000000000001",
        kind="door",
        eid="00010001",
        dir=tmp_path,
        port=8884,
        ca="ca.pem",
        cert="c.pem",
        key="c.key",
        pub="p.pub",
        extra=sync_lines,
    )
    if not single:
        text = text.replace('broker_host = "127.0.0.1"\n', "").replace("broker_port = 8884\n", "")
    path = tmp_path / "firmware.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path)


def test_a_single_broker_config_is_still_valid(tmp_path):
    s = config(tmp_path, "").sync
    assert (s.broker_host, s.broker_port, s.brokers) == ("127.0.0.1", 8884, ())
    assert s.addresses == (("127.0.0.1", 8884),)


def test_several_nodes_in_order_default_port_and_ipv6(tmp_path):
    s = config(tmp_path, 'brokers = ["mq1.example:8883", "mq2.example", "[fd00::3]:9883"]', single=False).sync
    assert s.addresses == (("mq1.example", 8883), ("mq2.example", 8883), ("fd00::3", 9883))
    assert (s.broker_host, s.broker_port) == ("mq1.example", 8883)


@pytest.mark.parametrize(
    "value, words",
    [
        ("[]", "is empty"),
        ('["mq1:0"]', "outside 1..65535"),
        ('["mq1:x"]', "not host:port"),
        ('["fd00::1"]', "not host:port"),
        ('["mq1:8883", "mq1:8883"]', "twice"),
        ("[1]", "not a"),
        ('"mq1:8883"', "is not a list"),
    ],
)
def test_bad_broker_lists_are_refused_naming_the_fix(tmp_path, value, words):
    with pytest.raises(ConfigError) as e:
        config(tmp_path, f"brokers = {value}", single=False)
    assert "[sync].brokers" in str(e.value) and words in str(e.value)


def test_brokers_and_broker_host_together_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="together with broker_host"):
        config(tmp_path, 'brokers = ["mq1:8883"]')
