"""Draws avatars/mira.png, the example persona's original portrait (run once; the PNG is committed)."""

from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

W, H = 512, 640


def main() -> None:
    image = Image.new("RGB", (W, H))
    draw = ImageDraw.Draw(image)
    for y in range(H):  # dusk sky behind her
        t = y / H
        draw.line([(0, y), (W, y)], fill=(int(40 + 60 * t), int(50 + 30 * t), int(110 - 30 * t)))
    for i in range(40):  # a few stars
        x, y = (i * 97) % W, (i * 53) % (H // 2)
        draw.ellipse([x, y, x + 2, y + 2], fill=(230, 230, 255))
    draw.ellipse([120, 90, 392, 420], fill=(52, 34, 70))  # hair, back
    draw.polygon([(90, 640), (150, 470), (362, 470), (422, 640)], fill=(40, 110, 120))  # cloak
    draw.rectangle([228, 380, 284, 480], fill=(238, 200, 170))  # neck
    draw.ellipse([166, 150, 346, 400], fill=(245, 212, 184))  # face
    draw.pieslice([150, 110, 362, 330], 180, 360, fill=(70, 44, 92))  # fringe
    for cx in (222, 290):  # eyes
        draw.ellipse([cx - 17, 250, cx + 17, 278], fill=(255, 255, 255))
        draw.ellipse([cx - 9, 254, cx + 9, 276], fill=(60, 140, 130))
        draw.ellipse([cx - 4, 259, cx + 4, 269], fill=(20, 20, 30))
        draw.arc([cx - 20, 232, cx + 20, 252], 200, 340, fill=(60, 36, 70), width=4)  # brows
    draw.line([(256, 282), (250, 318), (260, 320)], fill=(210, 160, 140), width=3)  # nose
    draw.arc([226, 322, 286, 356], 20, 160, fill=(170, 70, 80), width=4)  # soft smile
    draw.ellipse([318, 160, 350, 192], fill=(250, 220, 120))  # moon hairpin
    draw.ellipse([328, 156, 356, 186], fill=(70, 44, 92))
    image = image.filter(ImageFilter.SMOOTH)
    out = Path(__file__).resolve().parent.parent / "avatars" / "mira.png"
    image.save(out, optimize=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
