"""The playground page in a real browser: headless Chromium (Debian's chromium + chromium-driver) via selenium.

Skipped, with the reason, where selenium or the browser is missing (.ci/run installs both). Set
PLAYGROUND_SCREENSHOT=FILE to keep the screenshot (the README's docs/playground.png is one), and
PLAYGROUND_URL=http://... to point the test at a server already running (a trained model looks better).
"""
import os
import shutil

import pytest

webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test drives Chromium with selenium")

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402  (after the importorskip)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


@pytest.fixture
def browser():
    binary = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        pytest.skip("no Chromium and chromedriver on PATH (Debian: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=options)
    yield driver
    driver.quit()


@pytest.fixture
def page_url(request):
    if os.environ.get("PLAYGROUND_URL"):
        return os.environ["PLAYGROUND_URL"].rstrip("/")
    return request.getfixturevalue("live_servers")["main"].url


# Records, at every change of the output, how many tokens it shows and whether the request is still running.
WATCH_OUTPUT = """
window.seen = [];
new MutationObserver(() => window.seen.push([document.querySelectorAll("#output .token").length,
                                             !document.getElementById("stop").disabled]))
    .observe(document.getElementById("output"), {childList: true});
"""


def test_the_playground_streams_text_and_shows_each_tokens_alternatives(browser, page_url, tmp_path):
    browser.get(page_url + "/")
    fill(browser, "prompt", "ROMEO:")
    fill(browser, "temperature", "0.8")
    fill(browser, "seed", "1")  # the same draws every run
    fill(browser, "max-tokens", "60")
    browser.execute_script(WATCH_OUTPUT)
    browser.find_element(By.ID, "generate").click()
    WebDriverWait(browser, 30).until(lambda b: "tokens in" in b.find_element(By.ID, "status").text)

    output = browser.find_element(By.ID, "output").text
    assert output.startswith("ROMEO:") and len(output) > len("ROMEO:")
    seen = browser.execute_script("return window.seen")
    assert any(count >= 2 and running for count, running in seen)  # tokens shown while the request still ran

    tokens = browser.find_elements(By.CSS_SELECTOR, "#output .token")
    assert len(tokens) >= 2
    ActionChains(browser).move_to_element(tokens[1]).perform()  # point at the second generated token
    WebDriverWait(browser, 5).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#details .alt"))
    rows = browser.find_elements(By.CSS_SELECTOR, "#details .alt")
    assert 1 <= len(rows) <= 8 and all(row.text.strip().endswith("%") for row in rows)
    assert "probability" in browser.find_element(By.CSS_SELECTOR, "#details h3").text

    screenshot = tmp_path / "playground.png"
    assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
    if os.environ.get("PLAYGROUND_SCREENSHOT"):
        shutil.copy(screenshot, os.environ["PLAYGROUND_SCREENSHOT"])


def fill(browser, element_id: str, text: str) -> None:
    field = browser.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(text)


def test_chat_mode_streams_a_reply_into_the_conversation_with_each_tokens_alternatives(browser, page_url):
    browser.get(page_url + "/")
    browser.find_element(By.ID, "mode-chat").click()
    assert browser.find_element(By.ID, "generate").text == "Send"
    fill(browser, "system", "Be brief.")
    fill(browser, "temperature", "0")
    fill(browser, "max-tokens", "12")
    for turn, message in enumerate(["Who's there?", "Long live the king!"], start=1):
        fill(browser, "prompt", message)
        browser.execute_script(WATCH_OUTPUT.replace("#output .token", "#output .assistant .token")
                               .replace('observe(document.getElementById("output"), {childList: true})',
                                        'observe(document.getElementById("output"), {childList: true, subtree: true})'))
        browser.find_element(By.ID, "generate").click()
        WebDriverWait(browser, 30).until(lambda b: "tokens in" in b.find_element(By.ID, "status").text)
        turns = browser.find_elements(By.CSS_SELECTOR, "#output .turn")
        assert [t.get_attribute("class") for t in turns] == ["turn user", "turn assistant"] * turn
        assert message in turns[-2].text
        seen = browser.execute_script("return window.seen")
        assert any(count >= 1 and running for count, running in seen)  # the reply streamed in
    status = browser.find_element(By.ID, "status").text
    assert "plain template" in status  # conftest's model was never chat-tuned, and the page says so
    tokens = browser.find_elements(By.CSS_SELECTOR, "#output .assistant .token")
    ActionChains(browser).move_to_element(tokens[0]).perform()
    WebDriverWait(browser, 5).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#details .alt"))
    assert all(row.text.strip().endswith("%") for row in browser.find_elements(By.CSS_SELECTOR, "#details .alt"))
    browser.find_element(By.ID, "reset").click()
    assert browser.find_elements(By.CSS_SELECTOR, "#output .turn") == []
