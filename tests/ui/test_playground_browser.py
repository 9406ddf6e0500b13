"""Issue 21: the playground page at /playground/.

The first tests run in `make test`: the page and every file it loads are served (public, with a CSP that admits
nothing from outside), and the manifest route the page reads. The browser tests run in `make ui-test`
(GENSERVE_UI_TEST=1): a real `genserve serve` with an API key over tiny models, and headless Debian chromium driven
by Playwright (the system browser, never a downloaded one) doing what a person does; each answer shown is checked
against the API's own answer to the same request. They skip, saying why, where chromium or playwright is missing.
"""

import base64
import os
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.api.playground import static_files
from service.engine.errors import UnknownModel
from service.settings import Settings
from tests.e2e.test_server import REPO, free_port, serve_command, server_env, stop, wait_ready

KEY = "ui-key-5e1d07"
CHROMIUM = os.environ.get("GENSERVE_CHROMIUM") or shutil.which("chromium")
HAS_ESPEAK = shutil.which("espeak-ng") is not None
IMPORTS = re.compile(r"""(?:from\s+|import\s*\(\s*|(?:src|href)=)["'](\./|)([\w.-]+\.(?:js|css))["']""")
UI_S = 120_000  # ms: the longest wait for one action of the page (tiny models on a busy 2-core machine)


class StandInEngine:
    """What the manifest route and the model list need of an engine: one model, `tiny`."""

    manifest = {"name": "tiny", "version": 1, "capabilities": {"sample": {"procedure": "ancestral"}},
                "provenance": {"command": "genserve train ..."}}

    def model(self, name):
        if name != "tiny":
            raise UnknownModel(f"unknown model {name!r}", field="model")
        return SimpleNamespace(manifest=self.manifest)

    def describe(self, name):
        self.model(name)
        return {"name": "tiny", "version": 1, "family": "fake", "capabilities": ["sample"], "data": {}}

    def list_models(self):
        return [self.describe("tiny")]

    def unavailable_models(self):
        return []


@pytest.fixture
def keyed(tmp_path) -> TestClient:
    keys = tmp_path / "keys"
    keys.write_text(KEY + "\n")
    return TestClient(create_app(StandInEngine(), Settings(api_keys_file=str(keys))), follow_redirects=False)


# --- in `make test`: the files and the route, no browser --------------------------------------------------------


def test_the_page_and_every_file_it_loads_are_public_and_say_where_they_may_fetch_from(keyed):
    assert keyed.get("/v1/models").status_code == 401  # the API needs the key ...
    redirect = keyed.get("/playground")  # ... the page does not
    assert redirect.status_code == 307 and redirect.headers["location"] == "playground/"
    page = keyed.get("/playground/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.text == keyed.get("/playground/index.html").text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    loaded, pending = set(), ["index.html"]
    while pending:  # follow every import, script and stylesheet from index.html
        name = pending.pop()
        response = keyed.get(f"/playground/{name}")
        assert response.status_code == 200, f"{name} is loaded by the page but not served"
        assert response.headers["content-type"].split(";")[0] == {
            "html": "text/html", "js": "text/javascript", "css": "text/css"}[name.rpartition(".")[2]]
        loaded.add(name)
        pending += [found for _, found in IMPORTS.findall(response.text) if found not in loaded]
    served = {path.removeprefix("/playground/") for path in static_files()} - {""}
    assert loaded == served, f"files served that nothing loads: {served - loaded}"
    assert not re.search(r"https?://", "".join(keyed.get(f"/playground/{n}").text for n in loaded))
    assert keyed.get("/playground/missing.js").status_code == 401  # only the page's own files are public
    assert keyed.head("/playground/app.js").status_code == 200


def test_the_manifest_route_needs_the_key_and_names_an_unknown_model(keyed):
    assert keyed.get("/v1/models/tiny/manifest").status_code == 401
    answer = keyed.get("/v1/models/tiny/manifest", headers={"authorization": f"Bearer {KEY}"})
    assert answer.status_code == 200 and answer.json() == StandInEngine.manifest
    missing = keyed.get("/v1/models/nope/manifest", headers={"authorization": f"Bearer {KEY}"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_model"


# --- in `make ui-test`: a person in a real browser -------------------------------------------------------------

def _why_no_browser_test() -> str | None:
    if os.environ.get("GENSERVE_UI_TEST") != "1":
        return "browser test: `make ui-test` runs it (GENSERVE_UI_TEST=1)"
    if CHROMIUM is None:
        return "chromium is not installed (Debian: apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (`make ui-test` installs it into the venv)"
    return None


browser_test = pytest.mark.skipif(_why_no_browser_test() is not None, reason=str(_why_no_browser_test()))


@pytest.fixture(scope="module")
def server(tiny_store, tiny_text_store, tiny_vae_store, request, tmp_path_factory) -> str:
    """A server with an API key over pixelcnn, charrnn, vae and (where espeak-ng can make its speech) wavenet."""
    logs = tmp_path_factory.mktemp("ui-server")
    models = logs / "models"
    stores = {"pixelcnn": tiny_store, "charrnn": tiny_text_store, "vae": tiny_vae_store}
    if HAS_ESPEAK:
        stores["wavenet"] = request.getfixturevalue("tiny_audio_store")
    for name, store in stores.items():
        shutil.copytree(store / name, models / name)
    (logs / "keys").write_text(KEY + "\n")
    port = free_port()
    env = server_env() | {"GENSERVE_API_KEYS_FILE": str(logs / "keys")}
    with open(logs / "stdout", "wb") as out, open(logs / "stderr", "wb") as err:
        process = subprocess.Popen(serve_command(models, port), cwd=REPO, env=env, stdout=out, stderr=err,
                                   stdin=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(process, base, logs)
        yield base
    finally:
        stop(process)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("ui-screenshots")
    print(f"screenshots: {directory}")
    return directory


@pytest.fixture
def page(browser, server):
    """The playground, its key given and the models read; fails on any script error of the page."""
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    tab = context.new_page()
    errors = []
    tab.on("pageerror", lambda error: errors.append(error))
    tab.set_default_timeout(UI_S)
    tab.goto(f"{server}/playground/")
    tab.get_by_label("API key", exact=True).fill(KEY)
    tab.get_by_role("button", name="Use key").click()
    expect_status(tab, "#boot-status", "reading the models: done")
    yield tab
    context.close()
    assert not errors, errors


def api(server: str) -> httpx.Client:
    return httpx.Client(base_url=server, headers={"authorization": f"Bearer {KEY}"}, timeout=UI_S / 1000)


def expect_status(page, selector: str, text: str) -> str:
    """Wait until the status element shows `text` (not an error), and return what it says."""
    status = page.locator(selector).first
    status.filter(has_text=re.compile(f"{re.escape(text)}|Error|error|[45]\\d\\d ")).wait_for()
    said = status.inner_text()
    assert text in said, said
    return said


def gray(canvas) -> list[int]:
    """A canvas's pixels, row-major, as gray levels 0..255 (the red channel)."""
    return canvas.evaluate("c => Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data"
                           ".filter((_, i) => i % 4 === 0))")


def draw(page, selector: str, points: list[tuple[float, float]]) -> None:
    """A mouse stroke through `points`, in pad cells (0..28)."""
    box = page.locator(selector).bounding_box()
    at = [(box["x"] + x / 28 * box["width"], box["y"] + y / 28 * box["height"]) for x, y in points]
    page.mouse.move(*at[0])
    page.mouse.down()
    for x, y in at[1:]:
        page.mouse.move(x, y, steps=6)
    page.mouse.up()


def sent(page, path: str, action) -> dict:
    """The JSON body the page POSTs to `path` when `action()` runs."""
    with page.expect_request(lambda r: r.method == "POST" and r.url.endswith(path)) as request:
        action()
    return request.value.post_data_json


@browser_test
def test_without_a_key_or_with_a_bad_one_the_page_shows_the_api_message(browser, server, shots):
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{server}/playground/")
    said = expect_status(page, "#boot-status", "401 unauthorized: authorization: missing")
    assert "Bearer <key>" in said
    page.get_by_label("API key", exact=True).fill("not-the-key")
    page.get_by_role("button", name="Use key").click()
    expect_status(page, "#boot-status", "401 unauthorized: authorization: not a valid 'Bearer <key>'")
    assert page.get_by_role("alert").inner_text().startswith("401 unauthorized")
    page.screenshot(path=shots / "bad-key.png")
    context.close()


@browser_test
def test_a_sampled_grid_streams_the_servers_rows_and_the_same_seed_gives_the_same_images(page, server, shots):
    page.get_by_role("link", name="Sample").click()
    section = page.locator("#sample")
    section.get_by_role("combobox", name="Model").select_option("pixelcnn")
    section.get_by_label("Samples", exact=True).fill("4")
    section.get_by_role("combobox", name="Label").select_option("3")
    new_seed = section.get_by_role("button", name="Sample (new seed)")
    body = sent(page, "/v1/models/pixelcnn/sample/stream", new_seed.click)
    expect_status(page, "#sample .status", "sampling 4 from pixelcnn: done")
    assert body["n"] == 4 and body["label"] == 3
    assert int(section.get_by_label("Seed", exact=True).input_value()) == body["seed"]  # shown, for "same seed again"
    shown = [gray(c) for c in section.locator("#sample-grid canvas").all()]
    with api(server) as client:
        samples = client.post("/v1/models/pixelcnn/sample", json={**body, "format": "array"}).json()["samples"]
    assert shown == [[255 * v for row in image for v in row] for image in samples]  # the server's pixels, exactly
    assert all(any(pixels) for pixels in shown)  # and none blank
    page.screenshot(path=shots / "sample.png")
    section.get_by_role("button", name="Same seed again").click()
    expect_status(page, "#sample .status", "sampling 4 from pixelcnn: done")
    assert [gray(c) for c in section.locator("#sample-grid canvas").all()] == shown


@browser_test
def test_draw_score_erase_and_complete(page, server, shots):
    page.get_by_role("link", name="Score").click()
    draw(page, "#score-pad", [(8, 6), (14, 5), (19, 8), (14, 14), (10, 22), (20, 22)])
    scored = sent(page, "/v1/models/pixelcnn/score", page.get_by_role("button", name="Score with every model").click)
    expect_status(page, "#score .status", "scoring with 2 models: done")
    assert sum(map(sum, scored["inputs"][0])) > 20  # the stroke arrived as ink
    with api(server) as client:
        [expected] = client.post("/v1/models/pixelcnn/score", json=scored).json()["results"]
    card = page.locator(".card", has=page.get_by_role("heading", name="pixelcnn"))
    assert f"{expected['log_likelihood_nats']:.2f} nats" in card.inner_text()
    assert "exact log p(x)" in card.inner_text() and "anomaly percentile" in card.inner_text()
    assert "IWAE: a lower bound" in page.locator(".card", has=page.get_by_role("heading", name="vae")).inner_text()
    page.screenshot(path=shots / "score.png")

    page.get_by_role("link", name="Complete").click()
    page.get_by_label("Ink", exact=True).check()
    draw(page, "#complete-pad", [(6, 14), (22, 14)])
    page.get_by_label("Erase (hide from the model)", exact=True).check()
    draw(page, "#complete-pad", [(4, 4), (24, 4), (24, 12), (4, 12)])
    section = page.locator("#complete")
    section.get_by_role("combobox", name="Model").select_option("pixelcnn")
    section.get_by_label("Completions", exact=True).fill("3")
    body = sent(page, "/v1/models/pixelcnn/complete", section.get_by_role("button", name="Complete").click)
    expect_status(page, "#complete .status", "3 completions from pixelcnn: done")
    mask, observed = body["mask"], body["inputs"][0]
    assert 0 < sum(map(sum, mask)) < 28 * 28  # some pixels hidden, some kept
    shown = [gray(c) for c in section.locator("#complete-results canvas").all()]
    assert len(shown) == 3
    for pixels in shown:  # every observed pixel is kept, as the API promises
        assert all(pixels[28 * y + x] == 255 * observed[y][x] for y in range(28) for x in range(28) if mask[y][x])
    page.screenshot(path=shots / "complete.png")


@browser_test
def test_a_latent_walk_between_two_drawings_and_a_point_decoded_from_the_slice(page, shots):
    page.get_by_role("link", name="Latent space").click()
    draw(page, "#latent-a", [(14, 4), (14, 24)])
    draw(page, "#latent-b", [(6, 8), (22, 8), (10, 24)])
    body = sent(page, "/v1/models/vae/interpolate", page.get_by_role("button", name="Encode A and B").click)
    expect_status(page, "#latent .status", "encoding A and B with vae: done")
    assert body["steps"] == 9 and len(body["inputs"]) == 2
    assert len(page.locator("#latent-strip canvas").all()) == 9
    page.get_by_label("Walk from A to B", exact=True).fill("8")
    assert page.locator("#latent-view canvas").get_attribute("aria-label") == "point 8"
    page.locator("#latent-slice").click(position={"x": 200, "y": 40})
    expect_status(page, "#latent .status", "decoding (")
    assert any(gray(page.locator("#latent-decoded canvas")))
    page.screenshot(path=shots / "latent.png", full_page=True)


@browser_test
def test_text_streams_the_same_characters_the_api_samples(page, server):
    page.get_by_role("link", name="Text").click()
    section = page.locator("#text")
    section.get_by_role("textbox", name="Prompt").fill("The ")
    section.get_by_label("Characters", exact=True).fill("40")
    section.get_by_label("Seed", exact=True).fill("11")
    body = sent(page, "/v1/models/charrnn/sample/stream", section.get_by_role("button", name="Generate").click)
    expect_status(page, "#text .status", "40 characters from charrnn: done")
    with api(server) as client:
        [expected] = client.post("/v1/models/charrnn/sample", json=body).json()["samples"]
    assert page.locator("#text-out").text_content() == expected and len(expected) == 44


@pytest.mark.skipif(not HAS_ESPEAK, reason="espeak-ng is not installed: no speech to train the tiny WaveNet on")
@browser_test
def test_audio_plays_as_it_streams_downloads_the_same_wav_scores_it_and_cancels(page, server, tmp_path, shots):
    page.get_by_role("link", name="Audio").click()
    section = page.locator("#audio")
    section.get_by_label("Seconds", exact=True).fill("0.5")
    body = sent(page, "/v1/models/wavenet/sample/stream", section.get_by_role("button", name="Generate and play").click)
    expect_status(page, "#audio .status", "0.5 s from wavenet: done")
    frames = 8000  # 0.5 s at 16 kHz
    assert page.locator("#audio-progress").inner_text().startswith(f"{44 + 2 * frames} bytes received, 0.50 s")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download the WAV").click()
    wav = Path(download.value.path()).read_bytes()
    with api(server) as client:
        assert wav == client.post("/v1/models/wavenet/sample/stream", json=body).content  # every byte
        [expected] = client.post("/v1/models/wavenet/score", json={"inputs": [base64.b64encode(wav).decode()]}
                                 ).json()["results"]
    (tmp_path / "sample.wav").write_bytes(wav)
    section.get_by_label("WAV file", exact=True).set_input_files(tmp_path / "sample.wav")
    section.get_by_role("button", name="Score").click()
    expect_status(page, "#audio .status >> nth=1", "scoring sample.wav with wavenet: done")
    assert f"{expected['log_likelihood_nats']:.2f} nats" in page.locator("#audio-score").inner_text()
    page.screenshot(path=shots / "audio.png")

    section.get_by_label("Seconds", exact=True).fill("30")
    section.get_by_role("button", name="Generate and play").click()
    page.locator("#audio .status").first.get_by_role("button", name="Cancel").click()
    expect_status(page, "#audio .status", "30 s from wavenet: cancelled after")


@browser_test
def test_a_model_card_shows_the_manifest_and_the_calls(page, server, shots):
    page.goto(f"{server}/playground/#models/pixelcnn")
    card = page.locator("#model-card")
    card.get_by_role("heading", name="pixelcnn v1: pixelcnn").wait_for()
    with api(server) as client:
        manifest = client.get("/v1/models/pixelcnn/manifest").json()
    text = card.inner_text()
    assert manifest["provenance"]["git_commit"] in text and "test_nll_nats" in text
    assert "/v1/models/pixelcnn/sample" in text and "genserve.v1.Genserve/Sample" in text
    page.screenshot(path=shots / "card.png", full_page=True)
