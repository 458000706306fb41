"""Draw the ESC/POS bytes a receipt printer receives as a PNG, like thermal paper (docs/receipt.png).

It interprets exactly the commands terminal/receipt.py sends through python-escpos (ESC ! n print mode, ESC E n
bold, ESC a n alignment, ESC t n code page, ESC d n feed, GS V n cut, LF) and refuses any other byte sequence, so
the picture shows what the printer is told, not what we meant. Run as a script to rewrite docs/receipt.png:
    PYTHONPATH=. python tests/escpos_render.py
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf")
CHAR_W, LINE_H, MARGIN = 12, 24, 16


class UnknownCommand(ValueError):
    pass


def interpret(data: bytes) -> list[tuple[str, dict]]:
    """ESC/POS bytes -> [(line text, {bold, big, align})]; UnknownCommand for anything not listed above."""
    lines: list[tuple[str, dict]] = []
    mode = {"bold": False, "big": False, "align": 0}
    text = bytearray()
    i = 0
    while i < len(data):
        b = data[i]
        if b == 0x1B and i + 2 < len(data):
            cmd, arg = data[i + 1], data[i + 2]
            if cmd == ord("!"):
                mode["big"] = bool(arg & 0x30)  # double height/width; python-escpos sets bold with ESC E
            elif cmd == ord("E"):
                mode["bold"] = bool(arg)
            elif cmd == ord("a"):
                mode["align"] = arg
            elif cmd == ord("t"):
                pass  # code page 0 (PC437): the receipt is ASCII
            elif cmd == ord("d"):
                lines += [("", dict(mode))] * arg
            else:
                raise UnknownCommand(f"ESC {chr(cmd)!r} at byte {i}")
            i += 3
        elif b == 0x1D and data[i + 1 : i + 2] == b"V":
            lines.append(("--cut--", dict(mode)))
            i += 3
        elif b == 0x0A:
            lines.append((text.decode("ascii"), dict(mode)))
            text.clear()
            i += 1
        elif 0x20 <= b < 0x7F:
            text.append(b)
            i += 1
        else:
            raise UnknownCommand(f"byte {b:#04x} at {i}")
    return lines


def render(data: bytes, width_chars: int = 32) -> Image.Image:
    lines = interpret(data)
    width = width_chars * CHAR_W + 2 * MARGIN
    height = sum(2 * LINE_H if m["big"] else LINE_H for _, m in lines) + 2 * MARGIN
    image = Image.new("L", (width, height), 250)
    draw = ImageDraw.Draw(image)
    normal, big = ImageFont.truetype(str(FONT), 20), ImageFont.truetype(str(FONT), 40)
    y = MARGIN
    for text, m in lines:
        font, h = (big, 2 * LINE_H) if m["big"] else (normal, LINE_H)
        if text == "--cut--":
            for x in range(0, width, 12):
                draw.line((x, y + h // 2, x + 6, y + h // 2), fill=120)
        else:
            w = draw.textlength(text, font=font)
            x = MARGIN + {0: 0, 1: (width - 2 * MARGIN - w) / 2, 2: width - 2 * MARGIN - w}[m["align"]]
            draw.text((x, y), text, font=font, fill=20)
            if m["bold"]:
                draw.text((x + 1, y), text, font=font, fill=20)
        y += h
    return image


if __name__ == "__main__":
    import datetime as dt
    import sys
    import tempfile

    from escpos.printer import Dummy

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.test_canteen import sample_receipt_bytes
    from tests.test_subsidy_receipt import two_purse_receipts

    with tempfile.TemporaryDirectory() as tmp:
        out = sample_receipt_bytes(Path(tmp), Dummy())
        printer = Dummy()
        two_purse_receipts(Path(tmp) / "subsidy", printer, collect=True, subsidy=0)
    docs = Path(__file__).resolve().parent.parent / "docs"
    for name, data in (("receipt.png", out), ("receipt-subsidy.png", printer.output)):
        render(data).save(docs / name)
        print(f"wrote {docs / name} ({dt.datetime.now():%H:%M:%S})")
