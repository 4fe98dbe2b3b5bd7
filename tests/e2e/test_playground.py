"""The playground page (GET /playground) in a real browser: Debian's headless Chromium driven by
Selenium, against a real server, compared with the API's answers to the same requests."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
from openai import OpenAI

from e2e.server import ServerProcess

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Without the background-networking flags Chromium calls Google's services, which a closed
# network refuses; a fresh profile per browser keeps runs independent.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
PROMPT = "Reverse the word: planet"
# where the test also saves its screenshot (the README's docs/playground.png is made this way)
SCREENSHOT_ENV = "DSERVE_PLAYGROUND_SCREENSHOT"

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def browser():
    """A factory of headless Chromium sessions (window width x height), all quit at the end."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    if missing:
        # a warning too: pytest's summary shows warnings by default, skip reasons only with -rs
        warnings.warn(f"the playground's browser tests are skipped: {', '.join(missing)} not installed", stacklevel=1)
        pytest.skip(
            f"{', '.join(missing)} not installed: scripts/install.sh --test installs Debian's chromium and chromium-driver (needs root and apt-get)"
        )
    drivers, profiles = [], []

    def start(width: int, height: int):
        profile = tempfile.mkdtemp(prefix="dserve-chromium-")
        profiles.append(profile)
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
        drivers.append(driver)
        return driver

    yield start
    for driver in drivers:
        driver.quit()
    for profile in profiles:
        shutil.rmtree(profile, ignore_errors=True)


def open_playground(driver, url: str) -> None:
    driver.get(url + "/playground")
    WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "run").is_enabled())


def wait_done(driver, timeout: float = 300) -> list:
    panes = [p for p in driver.find_elements(By.CSS_SELECTOR, ".pane") if p.is_displayed()]
    WebDriverWait(driver, timeout, poll_frequency=0.25).until(
        lambda d: all(p.get_attribute("data-state") in ("done", "error") for p in panes)
    )
    return panes


def set_value(element, value: str) -> None:
    element.send_keys(Keys.CONTROL, "a")
    element.send_keys(value)


def console_errors(driver) -> list[dict]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def requested_urls(driver) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] in ("Network.requestWillBeSent", "Network.webSocketCreated"):
            urls.append(message["params"].get("request", message["params"]).get("url", ""))
    return urls


def api_answer(client: OpenAI, model: str, **fields) -> tuple[str, int]:
    """The API's non-streamed answer and NFE for the request a pane sends."""
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": fields.pop("prompt")}], extra_body=fields
    )
    return r.choices[0].message.content, r.usage.nfe


def pane_cells(pane) -> list:
    return pane.find_elements(By.CSS_SELECTOR, ".canvas .cell")


def test_two_algorithms_side_by_side_match_the_api(server, client, model_id, browser, tmp_path):
    driver = browser(1280, 900)
    open_playground(driver, server.url)
    set_value(driver.find_element(By.ID, "prompt"), PROMPT)
    set_value(driver.find_element(By.ID, "max-tokens"), "16")
    driver.find_element(By.ID, "ignore-eos").click()  # the whole canvas is decoded: every cell commits
    choices = [("llada", "reference", {}), ("fastdllm", "dual_cache", {"threshold": "0.9"})]
    for i, (engine, algorithm, params) in enumerate(choices):
        Select(driver.find_element(By.ID, f"p{i}-engine")).select_by_value(engine)
        Select(driver.find_element(By.ID, f"p{i}-algorithm")).select_by_value(algorithm)
        driver.find_element(By.CSS_SELECTOR, f"#p{i}-pane details summary").click()
        for name, value in {"block_length": "8", **params}.items():  # fields generated from /generation/algorithms
            set_value(driver.find_element(By.ID, f"p{i}-param-{name}"), value)
    driver.find_element(By.ID, "run").click()
    panes = wait_done(driver)

    assert len(panes) == 2
    for pane, (engine, algorithm, params) in zip(panes, choices):
        assert pane.get_attribute("data-state") == "done", pane.text
        canvas = pane.find_element(By.CSS_SELECTOR, ".canvas")
        cells = pane_cells(pane)
        assert len(cells) == int(canvas.get_attribute("data-length")) == 16
        assert all(c.get_attribute("data-state") == "committed" for c in cells)
        assert len(canvas.find_elements(By.CSS_SELECTOR, ".block")) == 2
        fields = {"block_length": 8, **{k: float(v) for k, v in params.items()}}
        answer, nfe = api_answer(
            client,
            model_id,
            prompt=PROMPT,
            max_tokens=16,
            ignore_eos=True,
            engine=engine,
            generation_algorithm=algorithm,
            **fields,
        )
        assert pane.find_element(By.CSS_SELECTOR, ".answer").get_property("textContent") == answer
        counters = [int(b.text) for b in pane.find_elements(By.CSS_SELECTOR, ".counters dd b")[:3:2]]  # step, NFE
        assert counters[0] >= 2 and counters[1] == nfe
        assert max(int(c.get_attribute("data-step")) for c in cells) == counters[0]

    for summary in driver.find_elements(By.CSS_SELECTOR, ".pane details[open] summary"):
        summary.click()  # parameters folded: the screenshot shows both canvases
    shot = tmp_path / "playground.png"
    driver.save_screenshot(str(shot))
    if os.environ.get(SCREENSHOT_ENV):
        Path(os.environ[SCREENSHOT_ENV]).write_bytes(shot.read_bytes())
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")

    # the replay slider, by keyboard: Home shows the all-masked canvas, End the final one
    replay = driver.find_element(By.ID, "p0-replay")
    replay.send_keys(Keys.HOME)
    assert all(c.get_attribute("data-state") == "masked" for c in pane_cells(panes[0]))
    replay.send_keys(Keys.RIGHT)
    assert 1 <= sum(c.get_attribute("data-state") == "committed" for c in pane_cells(panes[0])) < 16
    replay.send_keys(Keys.END)
    assert all(c.get_attribute("data-state") == "committed" for c in pane_cells(panes[0]))

    assert console_errors(driver) == []
    # chrome:// (its new-tab page), data: and about: are the browser's own; every request over a
    # network goes to the server on 127.0.0.1
    network = sorted({u for u in requested_urls(driver) if urlparse(u).scheme not in ("chrome", "data", "about")})
    print("requests:", network)
    assert {urlparse(u).hostname for u in network} == {"127.0.0.1"}
    assert any(u.endswith("/v1/chat/completions") for u in network)


def test_phone_width_and_keyboard_only(server, client, model_id, browser, tmp_path):
    """At 390 px nothing overflows sideways, every control has a label, and a run is started
    and read with the keyboard alone."""
    driver = browser(500, 844)  # headless Chromium's smallest window; the page is then emulated at 390
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride", {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True}
    )
    open_playground(driver, server.url)
    unlabelled = driver.execute_script(
        """return [...document.querySelectorAll('input, select, textarea, button')]
             .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())
             .map(e => e.outerHTML)"""
    )
    assert unlabelled == []
    body = driver.find_element(By.TAG_NAME, "body")

    def tab_to(element_id: str) -> None:
        for _ in range(40):
            if driver.switch_to.active_element.get_attribute("id") == element_id:
                return
            driver.switch_to.active_element.send_keys(Keys.TAB)
        raise AssertionError(f"#{element_id} is not reachable with Tab")

    body.send_keys(Keys.TAB)
    tab_to("max-tokens")
    set_value(driver.switch_to.active_element, "8")
    tab_to("compare")
    driver.switch_to.active_element.send_keys(Keys.SPACE)  # one algorithm
    tab_to("prompt")
    set_value(driver.switch_to.active_element, "Reverse the word: cat")
    tab_to("run")
    driver.switch_to.active_element.send_keys(Keys.ENTER)
    (pane,) = wait_done(driver)
    engine = Select(driver.find_element(By.ID, "p0-engine")).first_selected_option.get_attribute("value")
    algorithm = Select(driver.find_element(By.ID, "p0-algorithm")).first_selected_option.get_attribute("value")
    answer, _ = api_answer(
        client, model_id, prompt="Reverse the word: cat", max_tokens=8, engine=engine, generation_algorithm=algorithm
    )
    assert answer and pane.find_element(By.CSS_SELECTOR, ".answer").get_property("textContent") == answer
    width = driver.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1] == 390, width
    driver.save_screenshot(str(tmp_path / "playground-390px.png"))
    assert console_errors(driver) == []


def test_a_key_protected_server(browser):
    """With --api-key the page itself is public (a browser cannot send a Bearer header to open
    it) and says it needs the key; everything it fetches is refused without it and works with it."""
    srv = ServerProcess("--api-key", "s3cret-key")
    try:
        assert httpx.get(srv.url + "/playground").status_code == 200
        assert httpx.get(srv.url + "/generation/algorithms").status_code == 401
        driver = browser(1024, 800)
        driver.get(srv.url + "/playground")
        WebDriverWait(driver, 60).until(lambda d: "API key" in d.find_element(By.ID, "model").text)
        assert not driver.find_element(By.ID, "run").is_enabled()
        key = driver.find_element(By.ID, "api-key")
        key.send_keys("s3cret-key", Keys.ENTER)
        WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "run").is_enabled())
        assert driver.execute_script("return sessionStorage.getItem('dserve.apiKey')") == "s3cret-key"
        driver.find_element(By.ID, "compare").click()
        set_value(driver.find_element(By.ID, "max-tokens"), "8")
        driver.find_element(By.ID, "run").click()
        (pane,) = wait_done(driver)
        assert pane.get_attribute("data-state") == "done"
        assert pane.find_element(By.CSS_SELECTOR, ".answer").get_property("textContent") == "tenalp"
        # a raw prompt goes to /v1/completions and shows what the API answers to it
        Select(driver.find_element(By.ID, "mode")).select_by_value("raw")
        set_value(driver.find_element(By.ID, "prompt"), "Reverse the word: planet")
        driver.find_element(By.ID, "run").click()
        (pane,) = wait_done(driver)  # the click set the pane running before it returned
        raw = httpx.post(
            srv.url + "/v1/completions",
            headers={"Authorization": "Bearer s3cret-key"},
            json={"model": "dserve/llada-tiny-instruct", "prompt": "Reverse the word: planet", "max_tokens": 8},
            timeout=120,
        ).json()
        assert pane.get_attribute("data-state") == "done"
        assert pane.find_element(By.CSS_SELECTOR, ".answer").get_property("textContent") == raw["choices"][0]["text"]
        # the only console error is the refused listing before the key was typed
        assert [e for e in console_errors(driver) if "401" not in e["message"]] == []
    finally:
        srv.stop()
