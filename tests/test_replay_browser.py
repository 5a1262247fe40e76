"""The replay page in a real headless Chromium (the distribution's chromium + chromium-driver, driven by Selenium;
nothing is downloaded): it loads from a quick simulator run with no request leaving the page's origin, jumps with
the keyboard to the first applied rerank, and the DOM order of the phone's items is the trace's; the next screen
shows what the rerank put there. Screenshots of the phone view at 390 px and 1280 px go to docs/img/.

Skips (saying why) only when no Chromium / chromedriver is installed: `.ci/run` and `make browser` install them
(`apt-get install chromium chromium-driver`)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from edge_rerank.replay_page import serving, write_page
from edge_rerank.simulator.arms import ArmSpec, build_arm
from edge_rerank.simulator.replay import TRACES_FILE, list_states, record_replays, write_traces
from edge_rerank.simulator.user_model import UserModel

ROOT = Path(__file__).resolve().parents[1]
IMG = ROOT / "docs" / "img"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _browser() -> tuple[str, str] | None:
    binary = os.environ.get("CHROME_BIN") or next((p for b in BROWSERS if (p := shutil.which(b))), None)
    driver = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver")
    return (binary, driver) if binary and driver else None


@pytest.fixture(scope="module")
def page_url(world, inproc_cloud, tmp_path_factory):
    um = UserModel(world)
    arms = [build_arm(ArmSpec("A_cloud", "cloud"), um), build_arm(ArmSpec("B_heuristic", "heuristic"), um)]
    traces = record_replays(um, inproc_cloud, arms, [world.session(i, 5) for i in range(12)])
    run = tmp_path_factory.mktemp("replay_run")
    write_traces(traces, run / TRACES_FILE)
    page = write_page(run, title="browser test")
    with serving(page) as url:
        yield url, traces


@pytest.fixture(scope="module")
def driver():
    found = _browser()
    if found is None:
        pytest.skip("no Chromium + chromedriver on this machine (apt-get install chromium chromium-driver; "
                    ".ci/run does it where it can)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = found[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
                "--window-size=1280,900", "--force-device-scale-factor=1", "--lang=en-US"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    d = webdriver.Chrome(service=Service(executable_path=found[1]), options=opts)
    d.execute_cdp_cmd("Emulation.setEmulatedMedia",  # no scroll animation: the DOM is final after each key
                      {"features": [{"name": "prefers-reduced-motion", "value": "reduce"}]})
    try:
        yield d
    finally:
        d.quit()


def _press(d, key: str, times: int = 1) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    d.find_element("css selector", "h1").click()  # focus outside the form controls: the page's keys apply
    for _ in range(times):
        ActionChains(d).send_keys(key).perform()


def _ids(d, css: str) -> list[int]:
    return [int(e.get_attribute("data-id")) for e in d.find_elements("css selector", css)]


def _at(arm: dict, t: float) -> tuple[list[int], int]:
    """The arm's list and the first position on screen after every event up to time `t` (the trace's truth)."""
    states = list_states(arm)
    k = max(i for i, e in enumerate(arm["events"]) if e["t"] <= t)
    start = max([e["start"] for e in arm["events"][: k + 1] if e["k"] == "reveal"], default=0)
    return states[k], start


def _set_width(d, width: int, height: int) -> None:
    d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600})
    time.sleep(0.2)


def test_page_replays_the_first_applied_rerank_in_dom_order(driver, page_url):
    from selenium.webdriver.support.ui import Select

    url, traces = page_url
    d = driver
    _set_width(d, 1280, 900)
    d.get(url)
    V = traces["viewport_items"]
    # no request leaves the page: everything came from its own origin
    requests = [json.loads(m["message"])["message"] for m in d.get_log("performance")]
    urls = {r["params"]["request"]["url"] for r in requests if r["method"] == "Network.requestWillBeSent"}
    assert urls and all(u.startswith(url) for u in urls), urls
    # accessible: every control has a name, the phones' lists and the live regions have roles
    unnamed = d.execute_script("""
        return [...document.querySelectorAll('button, select, input')].filter(e =>
          !(e.getAttribute('aria-label') || (e.labels && e.labels.length) || e.textContent.trim())).map(e => e.id)""")
    assert unnamed == []
    assert len(d.find_elements("css selector", "ol.list[role=list][aria-label]")) == 2
    assert d.find_elements("css selector", "[role=status][aria-live=polite]")

    # the filter "the arms' outcomes differ" leaves only such sessions in the picker
    d.find_element("id", "f-differs").click()
    shown = [int(o.get_attribute("value")) for o in Select(d.find_element("id", "session")).options]
    assert shown == [i for i, s in enumerate(traces["sessions"]) if s["outcome_differs"]] and shown
    d.find_element("id", "f-differs").click()

    # the first session whose device arm applied a rerank before a screen it then showed, picked in the picker
    def shows_a_rerank(s: dict) -> bool:
        evs = s["arms"][1]["events"]
        t = next((e["t"] for e in evs if e["k"] == "outcome" and e["status"] == "applied"), None)
        return t is not None and any(e["k"] == "reveal" and e["t"] > t for e in evs)

    idx, s = next((i, s) for i, s in enumerate(traces["sessions"]) if s["outcome_differs"] and shows_a_rerank(s))
    Select(d.find_element("id", "session")).select_by_value(str(idx))
    assert d.find_element("tag name", "body").get_attribute("data-session") == s["id"]
    steps = sorted({0.0} | {e["t"] for a in s["arms"] for e in a["events"]})
    reranks = sorted({e["t"] for a in s["arms"] for e in a["events"] if e["k"] == "outcome"})
    t_applied = next(e["t"] for e in s["arms"][1]["events"] if e["k"] == "outcome" and e["status"] == "applied")

    _press(d, "n", reranks.index(t_applied) + 1)  # "jump to the next rerank", by keyboard
    assert int(d.find_element("tag name", "body").get_attribute("data-step")) == steps.index(t_applied)
    b = d.find_element("id", "arm-1")
    assert b.get_attribute("data-last-rerank-status") == "applied"
    assert b.get_attribute("data-last-rerank-fresh") == "true"
    for j in (0, 1):  # both phones: the DOM order is the trace's order at that moment
        ids, start = _at(s["arms"][j], t_applied)
        assert _ids(d, f"#arm-{j} .list li") == ids
        assert _ids(d, f"#arm-{j} .list li[data-visible='true']") == ids[start: start + V]
        assert _ids(d, f"#arm-{j} .next-list li") == ids[start + V: start + V + 8]
    moved = {m[0] for e in s["arms"][1]["events"] if e["t"] == t_applied and e["k"] == "outcome" and "moves" in e
             for m in e["moves"]}
    assert set(_ids(d, "#arm-1 .list li.moved")) == moved
    assert "applied" in d.find_element("id", "now").text

    # step on to the device arm's next screen: it shows what the rerank put there
    nxt = next(e for e in s["arms"][1]["events"] if e["t"] > t_applied and e["k"] == "reveal")
    _press(d, "\ue014", steps.index(nxt["t"]) - steps.index(t_applied))  # Right arrow
    assert _ids(d, "#arm-1 .list li[data-visible='true']") == nxt["ids"]
    ids_a, start_a = _at(s["arms"][0], nxt["t"])
    assert _ids(d, "#arm-0 .list li[data-visible='true']") == ids_a[start_a: start_a + V]

    # screenshots of that screen at a laptop and a phone width; legible: no sideways scrolling, text not tiny
    IMG.mkdir(parents=True, exist_ok=True)
    for width, height in ((1280, 860), (390, 844)):
        _set_width(d, width, height)
        assert d.execute_script("return document.documentElement.scrollWidth") <= width
        px = d.execute_script("return parseFloat(getComputedStyle(document.querySelector('#arm-1 .item .name'))"
                              ".fontSize)")
        assert px >= 11
        path = IMG / f"replay_{width}.png"
        assert d.save_screenshot(str(path)) and path.stat().st_size > 10_000
    # Space plays (the steps advance on their own) and pauses; Home goes back to the start
    Select(d.find_element("id", "speed")).select_by_value("32")
    before = int(d.find_element("tag name", "body").get_attribute("data-step"))
    _press(d, " ")
    assert d.find_element("id", "b-play").get_attribute("aria-pressed") == "true"
    time.sleep(1.0)
    _press(d, " ")
    assert int(d.find_element("tag name", "body").get_attribute("data-step")) > before
    assert d.find_element("id", "b-play").get_attribute("aria-pressed") == "false"
    _press(d, "\ue011")
    assert d.find_element("tag name", "body").get_attribute("data-step") == "0"
    errors = [m for m in d.get_log("browser") if m["level"] == "SEVERE"]
    assert errors == []
