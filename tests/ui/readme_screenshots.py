"""The README's playground screenshots (docs/playground-*.png), from a running server over the shipped store:

    make serve &   # then, with chromium and playwright installed (make ui-test installs both):
    .venv/bin/python tests/ui/readme_screenshots.py http://127.0.0.1:8000 docs

Not a test (pytest does not collect it): it drives the page as test_playground_browser.py does and writes
three 1000-pixel-wide PNGs, quantized to 64 colours to stay small.
"""

import shutil
import sys
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright


def draw(page, selector: str, points: list[tuple[float, float]]) -> None:
    box = page.locator(selector).bounding_box()
    at = [(box["x"] + x / 28 * box["width"], box["y"] + y / 28 * box["height"]) for x, y in points]
    page.mouse.move(*at[0])
    page.mouse.down()
    for x, y in at[1:]:
        page.mouse.move(x, y, steps=8)
    page.mouse.up()


def shot(page, path: Path, height: int) -> None:
    page.screenshot(path=path, clip={"x": 0, "y": 0, "width": 1000, "height": height})
    Image.open(path).convert("RGB").quantize(64).save(path, optimize=True)
    print(path, path.stat().st_size, "bytes")


def main(base: str, out: Path) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1000, "height": 1400})
        page.set_default_timeout(300_000)
        page.goto(f"{base}/playground/#sample")
        page.wait_for_selector("#boot-status:has-text('done')")
        sample = page.locator("#sample")
        sample.get_by_role("combobox", name="Model").select_option("pixelcnn")
        sample.get_by_label("Samples", exact=True).fill("16")
        sample.get_by_label("Seed", exact=True).fill("7")
        sample.get_by_role("button", name="Same seed again").click()
        page.wait_for_selector("#sample .status:has-text('done')")
        shot(page, out / "playground-sample.png", 560)
        page.locator("#sample-grid button").nth(2).click()  # the third sample, on every drawing pad
        page.get_by_role("link", name="Score").click()
        page.get_by_role("button", name="Score with every model").click()
        page.wait_for_selector("#score .status:has-text('done')")
        shot(page, out / "playground-score.png", 900)
        page.get_by_role("link", name="Complete").click()
        draw(page, "#complete-pad", [(2, 15), (26, 15), (26, 27), (2, 27)])
        draw(page, "#complete-pad", [(2, 20), (26, 20), (26, 25), (2, 25)])
        complete = page.locator("#complete")
        complete.get_by_role("combobox", name="Model").select_option("pixelcnn")
        complete.get_by_label("Completions", exact=True).fill("6")
        complete.get_by_role("button", name="Complete").click()
        page.wait_for_selector("#complete .status:has-text('done')")
        shot(page, out / "playground-complete.png", 560)
        browser.close()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
