"""`onecard issue wash`, then `issue card`, `issue replace`, `issue cancel` on simulated cards, as the card office
would run them, with the platform service as the registry over the real mosquitto (the station's own certificate,
its own topics, signed answers)."""

import json

import pytest
from cryptography.hazmat.primitives import serialization

from onecard.cli import main
from sam.keystore import KeystoreUnlock
from sam.software import SoftwareSam
from simulator.card import CardStateFile
from simulator.personalise import transport_card, write_card
from tests.mqtt_env import STATIONS, free_port, start_platform
from tests.support import ENTERPRISE

STATION = "000000000900"  # a station of the test enterprise, with a certificate and registry topics in the ACL
VOID_PURSE = {"offline_counter": 0, "online_counter": 0, "challenge": "00" * 8, "key_version": 1}
assert STATIONS[STATION] == ENTERPRISE.hex()


def station_network(broker, station: str = STATION) -> list:
    c = broker.pki.client(station)
    return [
        "--terminal-id",
        station,
        "--broker-host",
        "127.0.0.1",
        "--broker-port",
        broker.port,
        "--broker-ca",
        broker.pki.ca.cert,
        "--cert",
        c.cert,
        "--cert-key",
        c.key,
        "--platform-public-key",
        broker.pki.platform_public,
        "--registry-timeout",
        "5",
    ]


@pytest.fixture
def platform(tmp_path, broker):
    admin, service = start_platform(tmp_path, broker, terminals={})
    admin.add_terminal(STATION, ENTERPRISE.hex(), kind="issuing")
    admin.add_holder(ENTERPRISE.hex(), "E1001", "Zhang Wei", phone="13800000001")
    try:
        yield admin
    finally:
        service.stop()
        admin.close()


def run(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_issue_replace_cancel_from_the_command_line(tmp_path, capsys, broker, platform):
    d = tmp_path
    (d / "pass").write_text("card office\n")
    assert (
        run(
            capsys,
            "sam",
            "create-keystore",
            "--out",
            d / "ks",
            "--passphrase-file",
            d / "pass",
            "--enterprise",
            "00010001",
            "--algorithm",
            "aes128",
        )[0]
        == 0
    )
    factory = SoftwareSam.open(d / "ks", KeystoreUnlock.from_passphrase_file(d / "pass"))
    for name in ("old", "new"):
        write_card(d / f"{name}.json", transport_card(factory, ENTERPRISE))
        assert (
            run(
                capsys,
                "issue",
                "wash",
                "--keystore",
                d / "ks",
                "--passphrase-file",
                d / "pass",
                "--enterprise",
                "00010001",
                "--card",
                d / f"{name}.json",
                "--log",
                d / "station.db",
                "--to-version",
                "1",
            )[0]
            == 0
        )
    station = [
        "--keystore",
        d / "ks",
        "--passphrase-file",
        d / "pass",
        "--enterprise",
        "00010001",
        "--log",
        d / "station.db",
        *station_network(broker),
        "--wait",
        "2",
    ]

    code, out, err = run(
        capsys,
        "issue",
        "card",
        *station,
        "--card",
        d / "old.json",
        "--employee",
        "E1001",
        "--groups",
        "1,2",
        "--valid-to",
        "2028-12-31",
    )
    old_asn = CardStateFile(d / "old.json").load().asn.hex().upper()
    assert code == 0, err
    assert f"card {old_asn} issued to employee E1001" in out
    assert CardStateFile(d / "old.json").load().status == 0x01

    code, out, err = run(capsys, "issue", "card", *station, "--card", d / "new.json", "--employee", "E1001")
    assert code == 1 and "already holds one-card" in err  # one phone number, one one-card

    # The station reported the key version when it registered the card: counted before its log is uploaded.
    assert platform.key_versions() == {"00010001": {1: 1}}
    (d / "pf.key").write_bytes(
        broker.pki.platform_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    code, out, err = run(capsys, "platform", "key-versions", "--db", d / "platform.db", "--key", d / "pf.key")
    assert code == 0 and "00010001 1 1" in out and "unknown" not in out
    code, out, err = run(capsys, "platform", "key-versions", "--db", d / "platform.db", "--key", d / "pf.key", "--json")
    assert code == 0 and json.loads(out) == {"00010001": {"1": 1}}

    code, out, err = run(capsys, "issue", "replace", *station, "--old-card", d / "old.json", "--card", d / "new.json")
    new_asn = CardStateFile(d / "new.json").load().asn.hex().upper()
    assert code == 0, err
    assert f"card {new_asn} replaces {old_asn}" in out
    assert CardStateFile(d / "old.json").load().status == 0x02  # voided

    assert platform.card(old_asn)["status"] == "REPLACED"
    # The void went over the registry before the replacement: the frozen balance, the card's proof, this station.
    void = platform.voided(old_asn)
    assert void is not None and (void["frozen_cents"], void["terminal_id"]) == (0, STATION)
    assert len(void["proof"]) == 16
    assert platform.key_versions() == {"00010001": {1: 1}}  # the replacement, at the key version the station sent

    code, out, err = run(capsys, "issue", "cancel", *station, "--card", d / "new.json")
    assert code == 0, err
    assert out.strip().endswith("card cancelled")
    assert platform.card(new_asn)["status"] == "CANCELLED"


def test_no_broker_is_one_line(tmp_path, capsys, sync_pki):
    d = tmp_path
    (d / "pass").write_text("x\n")
    assert (
        run(
            capsys,
            "sam",
            "create-keystore",
            "--out",
            d / "ks",
            "--passphrase-file",
            d / "pass",
            "--enterprise",
            "00010001",
        )[0]
        == 0
    )
    c = sync_pki.client(STATION)
    code, out, err = run(
        capsys,
        "issue",
        "cancel",
        "--keystore",
        d / "ks",
        "--passphrase-file",
        d / "pass",
        "--enterprise",
        "00010001",
        "--reader",
        "no such reader",
        "--log",
        d / "s.db",
        "--terminal-id",
        STATION,
        "--broker-host",
        "127.0.0.1",
        "--broker-port",
        free_port(),
        "--broker-ca",
        sync_pki.ca.cert,
        "--cert",
        c.cert,
        "--cert-key",
        c.key,
        "--platform-public-key",
        sync_pki.platform_public,
        "--registry-timeout",
        "1",
        "--wait",
        "1",
    )
    assert code == 2 and err.count("\n") == 1 and "cannot reach the platform's broker" in err


def test_another_enterprises_card_and_holder_are_refused(tmp_path, broker, platform):
    from common.mqtt import TlsFiles
    from common.registry import RegistryError
    from terminal.registry_client import MqttRegistry, load_platform_public_key

    platform.add_enterprise("00020002", "Other Co")
    platform.add_holder("00020002", "X1", "Li Na")
    platform.issue_card("00020002", "X1", "0102030405060708")
    c = broker.pki.client(STATION)
    with MqttRegistry(
        STATION,
        "127.0.0.1",
        broker.port,
        TlsFiles(broker.pki.ca.cert, c.cert, c.key),
        load_platform_public_key(broker.pki.platform_public),
        timeout=5,
    ) as registry:
        assert registry.holder("00010001", "E1001") == {"name": "Zhang Wei", "phone": "13800000001"}
        with pytest.raises(RegistryError, match="not registered in enterprise 00010001"):
            registry.holder("00010001", "NOBODY")
        with pytest.raises(RegistryError, match="serves enterprise 00010001, not 00020002"):
            registry.holder("00020002", "X1")
        with pytest.raises(RegistryError, match="belongs to another enterprise"):
            registry.cancel("0102030405060708", settle=False)
        with pytest.raises(RegistryError, match="belongs to another enterprise"):
            registry.voided("0102030405060708", 0, "00" * 8, STATION, VOID_PURSE)
        with pytest.raises(RegistryError, match="cannot report a void over station"):
            registry.voided("0102030405060708", 0, "00" * 8, "000000000901", VOID_PURSE)
    assert platform.card("0102030405060708")["status"] == "ACTIVE"
    assert platform.voided("0102030405060708") is None


def test_a_terminal_certificate_cannot_ask_the_registry(tmp_path, broker, platform):
    """The ACL gives registry topics to stations only: a door's certificate publishing as a station gets no answer."""
    from common.mqtt import TlsFiles
    from common.registry import RegistryError
    from terminal.registry_client import MqttRegistry, load_platform_public_key

    door = "000000000001"
    platform.add_terminal(door, "00010001", kind="door")
    c = broker.pki.client(door)
    with MqttRegistry(
        door,
        "127.0.0.1",
        broker.port,
        TlsFiles(broker.pki.ca.cert, c.cert, c.key),
        load_platform_public_key(broker.pki.platform_public),
        timeout=1.5,
    ) as registry:
        with pytest.raises(RegistryError, match="did not answer the holder request"):
            registry.holder("00010001", "E1001")


def test_an_answer_signed_by_another_key_is_not_believed(tmp_path, broker, platform, caplog):
    """Answers are checked against the platform public key the station was given."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from common.mqtt import TlsFiles
    from common.registry import RegistryError
    from terminal.registry_client import MqttRegistry

    impostor = Ed25519PrivateKey.generate().public_key()
    c = broker.pki.client(STATION)
    with MqttRegistry(
        STATION, "127.0.0.1", broker.port, TlsFiles(broker.pki.ca.cert, c.cert, c.key), impostor, timeout=1.5
    ) as registry:
        with pytest.raises(RegistryError, match="did not answer"):
            registry.holder("00010001", "E1001")
    assert "not signed by the platform key" in caplog.text


def test_a_terminal_that_is_not_an_issuing_station_is_refused(tmp_path, broker, platform):
    """Even with a station certificate and topics, the platform answers only a terminal registered as issuing."""
    from common.mqtt import TlsFiles
    from common.registry import RegistryError
    from terminal.registry_client import MqttRegistry, load_platform_public_key

    other = "000000000903"  # a station certificate of the other enterprise, registered there as a door
    platform.add_enterprise("00020002", "Other Co")
    platform.add_terminal(other, "00020002", kind="door")
    c = broker.pki.client(other)
    with MqttRegistry(
        other,
        "127.0.0.1",
        broker.port,
        TlsFiles(broker.pki.ca.cert, c.cert, c.key),
        load_platform_public_key(broker.pki.platform_public),
        timeout=5,
    ) as registry:
        with pytest.raises(RegistryError, match="not registered with the platform as an issuing station"):
            registry.holder("00020002", "X1")


def test_replace_with_one_reader_waits_for_the_old_card_to_leave(tmp_path, capsys, monkeypatch, broker, platform):
    import threading

    import terminal.issuing_cli as issuing_cli
    from simulator.card_files import load_card
    from simulator.inprocess import InProcessReader

    d = tmp_path
    (d / "pass").write_text("card office\n")
    assert (
        run(
            capsys,
            "sam",
            "create-keystore",
            "--out",
            d / "ks",
            "--passphrase-file",
            d / "pass",
            "--enterprise",
            "00010001",
            "--algorithm",
            "aes128",
        )[0]
        == 0
    )
    factory = SoftwareSam.open(d / "ks", KeystoreUnlock.from_passphrase_file(d / "pass"))
    for name in ("old", "new"):
        write_card(d / f"{name}.json", transport_card(factory, ENTERPRISE))
        assert (
            run(
                capsys,
                "issue",
                "wash",
                "--keystore",
                d / "ks",
                "--passphrase-file",
                d / "pass",
                "--enterprise",
                "00010001",
                "--card",
                d / f"{name}.json",
                "--log",
                d / "station.db",
                "--to-version",
                "1",
            )[0]
            == 0
        )
    station = [
        "--keystore",
        d / "ks",
        "--passphrase-file",
        d / "pass",
        "--enterprise",
        "00010001",
        "--log",
        d / "station.db",
        *station_network(broker),
        "--wait",
        "10",
    ]
    assert run(capsys, "issue", "card", *station, "--card", d / "old.json", "--employee", "E1001")[0] == 0

    # One reader at the desk: the old card lies on it; the clerk takes it away a little after it is voided, then
    # puts the new card down.
    class DeskReader(InProcessReader):
        """Like a PC/SC reader: a card lying on it is offered again to the next wait_for_card."""

        def wait_for_card(self, timeout):
            with self._cond:
                self._handed_out = False
            return super().wait_for_card(timeout)

        def close(self):
            pass  # closing the station's handle does not take the card off the desk

    desk = DeskReader("desk reader")
    old = load_card(d / "old.json")
    desk.tap(old)
    monkeypatch.setattr(issuing_cli, "open_station_reader", lambda args, card_file=None: desk)

    def clerk():
        while old.state.status != 0x02:
            threading.Event().wait(0.05)
        threading.Event().wait(0.5)
        desk.remove()
        threading.Event().wait(1.0)
        desk.tap(load_card(d / "new.json"))

    helper = threading.Thread(target=clerk, daemon=True)
    helper.start()
    code, out, err = run(capsys, "issue", "replace", *station, "--reader", "desk")
    helper.join(5)
    assert code == 0, out + err
    assert "take it away from the reader" in out
    new_asn = CardStateFile(d / "new.json").load().asn.hex().upper()
    assert f"card {new_asn} replaces" in out and CardStateFile(d / "new.json").load().status == 0x01
