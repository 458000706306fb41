"""The luma display: each screen rendered on luma's dummy device and checked by its pixels, in Chinese and English."""

import datetime as dt

import pytest

from common.config import DEFAULT_FONT, DisplaySection
from terminal.decision import Decision
from terminal.display import GREEN, RED, DisplayError, Fonts, LumaDisplay, open_device
from terminal.screens import Screen, decision_screen, entry_screen, idle_screen, prompt_screen

pytestmark = pytest.mark.skipif(
    not DEFAULT_FONT.is_file(), reason="fonts-wqy-microhei is not installed (deploy/setup-debian.sh installs it)"
)


def display(tmp_path=None, **changes):
    section = DisplaySection(driver="dummy", **changes)
    return LumaDisplay(open_device(section), Fonts(section.font, section.height), tmp_path)


def share(image, box, colour):
    """The share of pixels in box that have this colour."""
    region = image.crop(box).convert("RGB")
    counts = dict((c, n) for n, c in region.getcolors(region.width * region.height))
    return counts.get(colour, 0) / (region.width * region.height)


def lit(image, box):
    return sum(image.crop(box).convert("L").histogram()[129:])


def paid() -> Decision:
    return Decision(
        True,
        "pos.purchase",
        "completed",
        "Paid 12.50",
        asn="01",
        detail={"amount": 1250, "balance_after": 8750},
    )


def loaded() -> Decision:
    return Decision(
        True,
        "topup.load",
        "completed",
        "Loaded 50.00 - balance 87.50",
        asn="01",
        detail={"amount": 5000, "balance_after": 8750},
    )


def test_only_a_verified_balance_reaches_the_screen():
    # A purchase's balance_after is covered by no MAC the terminal checks (only the platform's TAC): not shown.
    assert decision_screen(paid()).balance is None and decision_screen(paid()).amount == 1250
    assert decision_screen(loaded()).balance == 8750  # MAC3 covers a load's balance after


def test_ok_screen_has_a_green_band_and_text_under_it():
    d = display()
    d.show(decision_screen(loaded()))
    img = d.image
    w, h = img.size
    assert share(img, (0, 0, w, h // 10), GREEN) > 0.9  # the band's top strip is plain green
    assert lit(img, (w // 2 - 20, 5, w // 2 + 20, h * 2 // 5 - 5)) > 50  # "OK" in white on it
    assert lit(img, (0, h * 2 // 5 + 2, w, h)) > 200  # reason, amount and balance below


def test_no_screen_is_red_and_chinese_glyphs_are_drawn():
    d = display()
    refused = Decision(False, "door.deny", "blacklisted", "Card reported lost or cancelled", asn="01")
    d.show(decision_screen(refused))
    img = d.image
    w, h = img.size
    assert share(img, (0, 0, w, h // 10), RED) > 0.9
    zh_row = (0, h * 2 // 5, w, h * 2 // 5 + h // 8)
    # Two different Chinese sentences give different pixels: real glyphs, not one "missing glyph" box for all.
    d.show(Screen("decision", "x", "此卡已挂失或注销", "no"))
    first = d.image.crop(zh_row).tobytes()
    d.show(Screen("decision", "x", "余额不足请充值啊", "no"))
    assert d.image.crop(zh_row).tobytes() != first and lit(d.image, zh_row) > 80


def test_idle_screen_shows_the_time_large_and_the_terminal_name():
    d = display()
    d.show(idle_screen("Canteen 1", dt.datetime(2026, 11, 23, 10, 5)))
    img = d.image
    w, h = img.size
    assert lit(img, (0, 0, w, h // 12 + 2)) > 20  # the name along the top
    assert lit(img, (w // 6, h // 5, w * 5 // 6, h // 2)) > 300  # 10:05, large
    assert share(img, (0, 0, w, h), GREEN) == 0 and share(img, (0, 0, w, h), RED) == 0


def test_amount_being_typed_and_a_keypad_error():
    d = display()
    d.show(entry_screen("12.5"))
    typed = lit(d.image, (0, 0, d.image.width, d.image.height * 2 // 5))
    d.show(entry_screen("12.50"))
    assert lit(d.image, (0, 0, d.image.width, d.image.height * 2 // 5)) > typed > 100  # one more digit, more ink
    d.show(entry_screen("", error="'12,50' not understood: type an amount (12.50)"))
    assert share(d.image, (0, 0, d.image.width, 8), RED) > 0.9


def test_monochrome_oled_geometry():
    d = display(width=128, height=64)
    d.device.mode = "1"  # an SSD1306 is one bit per pixel
    d.device.image = None
    d.show(prompt_screen("Pay 12.50: please tap your card", 1250))
    assert d.image.mode == "1" and d.image.size == (128, 64)
    assert lit(d.image, (0, 0, 128, 26)) > 50


def test_snapshots_are_png_files_and_idle_is_written_once(tmp_path):
    from PIL import Image

    d = display(tmp_path)
    d.show(idle_screen("Gate", dt.datetime(2026, 11, 23, 10, 5)))
    d.show(idle_screen("Gate", dt.datetime(2026, 11, 23, 10, 6)))
    d.show(decision_screen(paid()))
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["0001-idle.png", "0002-decision.png"]
    with Image.open(tmp_path / "0002-decision.png") as img:
        assert img.size == (160, 128) and share(img, (0, 0, 160, 10), GREEN) > 0.9


def test_missing_font_is_one_clear_line(tmp_path):
    with pytest.raises(DisplayError) as exc:
        Fonts(tmp_path / "no-such-font.ttc", 128)
    assert "fonts-wqy-microhei" in str(exc.value) and "[display].font" in str(exc.value)
    assert "\n" not in str(exc.value)


def test_display_hardware_absent_is_one_clear_line():
    with pytest.raises(DisplayError) as exc:
        open_device(DisplaySection(driver="ssd1306", i2c_port=7))
    assert "ssd1306" in str(exc.value) and "[display]" in str(exc.value)


def test_terminal_run_writes_display_snapshots(tmp_path):
    """`onecard terminal run --display-snapshots DIR` as the CLI wires it: a door's grant and its idle screen."""
    from simulator.inprocess import InProcessReader
    from terminal.adapters import open_outputs
    from tests.support import MONDAY_10AM, make_card, make_sam, make_terminal

    sam = make_sam()
    term, _ = make_terminal(tmp_path, sam, "door")
    term.outputs = open_outputs(term.config, term.event_log, tmp_path / "shots")
    reader = InProcessReader()
    reader.tap(make_card(sam))
    term.handle_tap(reader.wait_for_card(1), MONDAY_10AM)
    term._screen_since = 0  # the result has been shown long enough
    term.idle(lambda: MONDAY_10AM)
    term.outputs.close()
    assert sorted(p.name for p in (tmp_path / "shots").iterdir()) == ["0001-decision.png", "0002-idle.png"]
