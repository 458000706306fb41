"""luma adapter: lays a Screen (terminal/screens.py) out on an SPI/I2C LCD or OLED, or on luma's dummy device.

`render()` draws one screen into a PIL image of the display's size and mode; `LumaDisplay` sends it to the device
and, with a snapshot directory, also saves it as a PNG so a person can look at every screen.
"""

from __future__ import annotations

import threading
from pathlib import Path

from common.config import DisplaySection
from common.money import format_yuan
from terminal.screens import Screen

GREEN, RED, AMBER, WHITE, BLACK, GREY = (
    (0, 150, 60),
    (200, 30, 30),
    (230, 140, 0),
    (255, 255, 255),
    (0, 0, 0),
    (150, 150, 150),
)
MARKS = {"ok": ("OK", GREEN), "no": ("NO", RED), "alarm": ("!", AMBER)}


class DisplayError(Exception):
    """The display or its font cannot be used; the message names the setting and the fix."""


class Fonts:
    """The CJK font at the sizes a screen of this height needs; loaded once at start."""

    def __init__(self, path: Path, height: int):
        from PIL import ImageFont

        if not Path(path).is_file():
            raise DisplayError(
                f"display font {path} not found: apt-get install fonts-wqy-microhei, or set "
                "[display].font to a TrueType font with Chinese glyphs"
            )
        try:
            self.big = ImageFont.truetype(str(path), max(12, height * 3 // 10))
            self.text = ImageFont.truetype(str(path), max(10, height // 9))
            self.small = ImageFont.truetype(str(path), max(8, height // 12))
        except OSError as exc:
            raise DisplayError(
                f"display font {path} cannot be read ({exc}); set [display].font to a TrueType font with Chinese glyphs"
            ) from None


def _wrap(draw, text: str, font, width: int) -> list[str]:
    """Greedy wrap by characters (works for Chinese, which has no spaces, and English alike)."""
    lines, line = [], ""
    for word in text.replace(" ", " \0").split("\0"):
        candidate = line + word
        if line and draw.textlength(candidate.rstrip(), font=font) > width:
            lines.append(line.rstrip())
            line = word
            while draw.textlength(line.rstrip(), font=font) > width and len(line) > 1:
                cut = len(line)
                while cut > 1 and draw.textlength(line[:cut], font=font) > width:
                    cut -= 1
                lines.append(line[:cut])
                line = line[cut:]
        else:
            line = candidate
    if line.strip():
        lines.append(line.rstrip())
    return lines


def render(screen: Screen, size: tuple[int, int], mode: str, fonts: Fonts):
    """One screen as a PIL image. Colour displays get green/red/amber bands; a monochrome one inverts the band."""
    from PIL import Image, ImageDraw

    width, height = size
    mono = mode == "1"
    image = Image.new("RGB", size, BLACK)
    draw = ImageDraw.Draw(image)
    pad = max(2, width // 40)
    y = 0
    if screen.mark in MARKS:
        word, colour = MARKS[screen.mark]
        band = height * 2 // 5
        draw.rectangle((0, 0, width - 1, band - 1), fill=WHITE if mono else colour)
        draw.text((width // 2, band // 2), word, font=fonts.big, fill=BLACK if mono else WHITE, anchor="mm")
        y = band + pad
    elif screen.big:
        top = fonts.small.size + pad if screen.kind == "idle" else 0
        if screen.kind == "idle":
            draw.text((pad, 0), screen.name, font=fonts.small, fill=GREY if not mono else WHITE)
        band = height * 2 // 5
        draw.text((width // 2, top + band // 2), screen.big, font=fonts.big, fill=WHITE, anchor="mm")
        y = top + band + pad
    lines: list[tuple[str, object, tuple]] = []
    if screen.zh:
        lines += [(t, fonts.text, WHITE) for t in _wrap(draw, screen.zh, fonts.text, width - 2 * pad)]
    if screen.kind != "idle":
        lines += [(t, fonts.small, WHITE) for t in _wrap(draw, screen.text, fonts.small, width - 2 * pad)]
    if screen.name and screen.kind == "decision" and screen.name not in screen.text:
        lines.append((screen.name, fonts.small, WHITE))
    if screen.kind == "decision" and screen.balance is not None:
        money = f"¥{format_yuan(screen.amount)}  " if screen.amount is not None else ""
        lines.append((f"{money}余额 {format_yuan(screen.balance)}", fonts.text, WHITE))
    for text, font, colour in lines:
        if y + font.size > height:
            break
        draw.text((pad, y), text, font=font, fill=colour)
        y += font.size + pad // 2
    return image.convert(mode) if mode != "RGB" else image


def open_device(d: DisplaySection):
    """The luma device [display] names. Raises DisplayError naming the setting when it cannot be opened."""
    try:
        if d.driver == "st7735":
            from luma.core.interface.serial import spi
            from luma.lcd.device import st7735

            return st7735(
                spi(port=d.spi_port, device=d.spi_device, gpio_DC=d.gpio_dc, gpio_RST=d.gpio_rst),
                width=d.width,
                height=d.height,
                rotate=d.rotate,
            )
        if d.driver == "ssd1306":
            from luma.core.interface.serial import i2c
            from luma.oled.device import ssd1306

            return ssd1306(i2c(port=d.i2c_port, address=d.i2c_address), width=d.width, height=d.height, rotate=d.rotate)
        from luma.core.device import dummy

        return dummy(width=d.width, height=d.height, rotate=d.rotate, mode="RGB")
    except Exception as exc:  # luma raises its own DeviceNotFoundError, DevicePermissionError, OSError, ValueError
        raise DisplayError(
            f"cannot open the {d.driver} display ({type(exc).__name__}: {exc}); check the wiring "
            "and [display] (docs/install.md, Wiring)"
        ) from None


class LumaDisplay:
    """Shows each screen on a luma device; with snapshot_dir, also writes it as NNNN-kind.png."""

    def __init__(self, device, fonts: Fonts, snapshot_dir: Path | None = None):
        self.device, self.fonts, self.snapshot_dir = device, fonts, snapshot_dir
        self._lock = threading.Lock()  # the door thread shows alarms while the tap loop shows decisions
        self._count = 0
        self._last_kind = None
        if snapshot_dir is not None:
            snapshot_dir.mkdir(parents=True, exist_ok=True)
        self.image = None

    def show(self, screen: Screen) -> None:
        with self._lock:
            image = render(screen, self.device.size, self.device.mode, self.fonts)
            self.device.display(image)
            self.image = image
            # One idle snapshot after each other screen, not one a minute.
            if self.snapshot_dir is not None and not (screen.kind == "idle" and self._last_kind == "idle"):
                self._count += 1
                image.convert("RGB").save(self.snapshot_dir / f"{self._count:04d}-{screen.kind}.png")
            self._last_kind = screen.kind

    def display(self, text: str) -> None:
        from terminal.screens import notice_screen

        self.show(notice_screen(text))

    def close(self) -> None:
        with self._lock:
            try:
                self.device.cleanup()
            except Exception:
                pass  # a display that failed to clear must not keep the relay from being released
