"""The page in a real headless browser (Debian's chromium and chromedriver, driven by selenium), network off.

What the page shows for a clip is checked against ``hrlf predict`` on the same file; bad and oversized uploads
show one error message and the server goes on answering.
"""

from __future__ import annotations

import json
import shutil

import pytest
from tests.serve.conftest import LIMIT_MB

from hrlf.cli import main

pytestmark = pytest.mark.serve


@pytest.fixture(scope="module")
def browser():
    pytest.importorskip("selenium", reason="selenium not installed (make test-serve)")
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.skip("chromium / chromedriver not installed (make test-serve installs Debian's)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1200,1800", "--no-first-run", "--disable-extensions",
                # the network off: every host name fails to resolve except this machine's own address
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _open(browser, server):
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server + "/")
    WebDriverWait(browser, 30).until(lambda d: "model backbone" in d.find_element("id", "model").text)


def _submit(browser, *, files=(), text=""):
    from selenium.webdriver.support.ui import WebDriverWait

    browser.execute_script(
        "document.getElementById('results').replaceChildren(); document.getElementById('status').textContent = '';"
    )
    field = browser.find_element("id", "files")
    field.clear()
    if files:
        field.send_keys("\n".join(str(f) for f in files))
    box = browser.find_element("id", "text")
    box.clear()
    if text:
        box.send_keys(text)
    browser.find_element("id", "predict").click()

    def done(d):
        error = d.find_element("id", "error")
        return d.find_elements("css selector", ".card") or (error.is_displayed() and error.text)

    WebDriverWait(browser, 300).until(done)


def _shown(card) -> dict:
    chips = card.find_elements("css selector", ".modality")
    bars = card.find_elements("css selector", "rect.bar")
    return {
        "score": float(card.find_element("css selector", ".score").get_attribute("data-score")),
        "polarity": card.find_element("css selector", ".polarity").text,
        "states": {c.get_attribute("data-modality"): c.get_attribute("data-state") for c in chips},
        "changes": {b.get_attribute("data-modality"): float(b.get_attribute("data-change")) for b in bars},
    }


def _printed(run, capsys, *argv) -> dict:
    capsys.readouterr()
    assert main(["predict", str(run), *argv]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[0])


def test_a_clip_on_the_page_matches_hrlf_predict(browser, server, trained_run, media_dir, capsys, tmp_path):
    clip = media_dir / "talk" / "1.mp4"
    _open(browser, server)
    _submit(browser, files=[clip])
    [card] = browser.find_elements("css selector", ".card")
    shown = _shown(card)
    printed = _printed(trained_run, capsys, str(clip))
    assert shown["score"] == pytest.approx(printed["score"], abs=1e-4) and shown["polarity"] == printed["polarity"]
    assert shown["states"] == {"language": "available", "audio": "available", "vision": "available"}
    assert shown["changes"] == pytest.approx({m: c["change"] for m, c in printed["removed"].items()}, abs=1e-4)
    assert "movie" in card.find_element("css selector", ".transcript").text.lower()
    frames = card.find_elements("css selector", ".frames img")
    assert frames and all(f.get_attribute("naturalWidth") not in (None, "0") for f in frames)  # decoded JPEGs
    assert "face" in card.find_element("css selector", ".frames figcaption").text
    assert "extraction" in card.find_element("css selector", ".timing").text
    assert not browser.find_element("id", "error").is_displayed()
    browser.save_screenshot(str(tmp_path / "page.png"))
    assert (tmp_path / "page.png").stat().st_size > 10_000


def test_several_files_give_a_table_and_a_missing_face_is_shown(browser, server, media_dir):
    _open(browser, server)
    _submit(
        browser, files=[media_dir / "talk" / "2.mp4", media_dir / "screen" / "1.mp4", media_dir / "radio" / "1.wav"]
    )
    rows = browser.find_elements("css selector", "table.summary tr[data-input]")
    assert [r.get_attribute("data-input") for r in rows] == ["2.mp4", "1.mp4", "1.wav"]
    cards = browser.find_elements("css selector", ".card")
    states = [_shown(c)["states"] for c in cards]
    assert states[1] == {"language": "available", "audio": "available", "vision": "missing"}  # test pattern, no face
    assert states[2]["vision"] == "missing"  # audio only


def test_text_only_request(browser, server, trained_run, capsys):
    _open(browser, server)
    _submit(browser, text="what a wonderful film")
    [card] = browser.find_elements("css selector", ".card")
    shown = _shown(card)
    printed = _printed(trained_run, capsys, "--text", "what a wonderful film")
    assert shown["score"] == pytest.approx(printed["score"], abs=1e-4)
    assert shown["states"] == {"language": "available", "audio": "missing", "vision": "missing"}
    assert set(shown["changes"]) == {"language"}


def test_bad_and_oversized_uploads_show_one_message_and_the_server_stays_up(browser, server, tmp_path):
    notes = tmp_path / "notes.mp4"
    notes.write_text("meeting notes, not a video\n" * 20)
    _open(browser, server)
    _submit(browser, files=[notes])
    error = browser.find_element("id", "error")
    assert error.is_displayed() and error.text.startswith("error: notes.mp4: not a file this server reads")
    assert len(error.text.splitlines()) == 1
    big = tmp_path / "big.wav"
    big.write_bytes(b"RIFF\x00\x00\x00\x00WAVE" + b"\x00" * int((LIMIT_MB + 0.2) * 1024 * 1024))
    _submit(browser, files=[big])
    error = browser.find_element("id", "error")
    assert error.is_displayed() and "over the size limit of 1 MB" in error.text
    _submit(browser, text="still answering")  # the server is up
    assert browser.find_elements("css selector", ".card") and not browser.find_element("id", "error").is_displayed()


def test_an_emotion_checkpoint_shows_each_emotion(browser, emotion_server, emotion_run, capsys, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(emotion_server + "/")
    WebDriverWait(browser, 30).until(lambda d: "emotions:" in d.find_element("id", "model").text)
    _submit(browser, text="I am so happy today")
    [card] = browser.find_elements("css selector", ".card")
    printed = _printed(emotion_run, capsys, "--text", "I am so happy today")
    shown = {
        r.get_attribute("data-emotion"): float(r.find_elements("css selector", "td")[1].text)
        for r in card.find_elements("css selector", "tr[data-emotion]")
    }
    assert shown == pytest.approx(printed["emotions"], abs=1e-3)  # shown with three decimals
    bars = card.find_elements("css selector", "rect.bar")
    assert len(bars) == len(printed["emotions"]) and {b.get_attribute("data-modality") for b in bars} == {"language"}
    assert not card.find_elements("css selector", ".score")
    browser.save_screenshot(str(tmp_path / "emotions.png"))
