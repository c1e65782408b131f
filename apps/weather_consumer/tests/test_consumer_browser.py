"""The pages in a REAL headless Chromium (Debian's chromium + chromedriver)."""

from __future__ import annotations

import os

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait
from weather_consumer.service import CONSUMER_STALE_MESSAGE

pytestmark = pytest.mark.browser

SCREENSHOT_DIR = os.environ.get("WEATHER_SCREENSHOT_DIR", "/tmp")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--window-size=1100,900",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


def submit(browser, base, zip_code, country=""):
    browser.get(base + "/")
    zip_box = browser.find_element(By.ID, "zip")
    # The labels really label the fields (accessible names).
    assert browser.find_element(By.CSS_SELECTOR, "label[for=zip]").text.startswith("ZIP")
    zip_box.send_keys(zip_code)
    if country:
        browser.find_element(By.ID, "country").send_keys(country)
    browser.find_element(By.CSS_SELECTOR, "form.lookup button[type=submit]").click()
    WebDriverWait(browser, 10).until(EC.url_contains("/weather?"))


def test_form_result_then_stale_banner_when_producers_are_down(browser, run_producer,
                                                               live_consumer):
    prods = [run_producer() for _ in range(2)]
    consumer = live_consumer([p.url for p in prods])
    submit(browser, consumer.url, "10001", "us")
    assert browser.find_element(By.ID, "city").text == "City 10001"
    assert browser.find_element(By.ID, "temperature").text.endswith("°C")
    assert browser.find_element(By.ID, "producer").text
    assert not browser.find_elements(By.ID, "stale-banner")
    browser.save_screenshot(f"{SCREENSHOT_DIR}/weather-consumer-result.png")

    for p in prods:
        p.stop()
    submit(browser, consumer.url, "10001", "us")
    banner = browser.find_element(By.ID, "stale-banner")
    assert banner.is_displayed()
    assert CONSUMER_STALE_MESSAGE in banner.text
    assert browser.find_element(By.ID, "stale-age").text.endswith(" s")
    assert browser.find_element(By.ID, "city").text == "City 10001"
    browser.save_screenshot(f"{SCREENSHOT_DIR}/weather-consumer-stale.png")


def test_503_page_when_nothing_can_be_served(browser, run_producer, live_consumer):
    prod = run_producer()
    consumer = live_consumer([prod.url])
    prod.stop()
    submit(browser, consumer.url, "94105")
    notice = browser.find_element(By.ID, "error")
    assert "Weather unavailable" in notice.text
    assert "no saved answer" in browser.find_element(By.ID, "reason").text
    assert "Traceback" not in browser.page_source
    browser.save_screenshot(f"{SCREENSHOT_DIR}/weather-consumer-503.png")


def test_bad_input_shows_the_reason_and_status_page_renders(browser, run_producer,
                                                           live_consumer):
    prod = run_producer()
    consumer = live_consumer([prod.url])
    browser.get(consumer.url + "/weather?zip=%3Cb%3E1")
    assert "only letters" in browser.find_element(By.ID, "reason").text
    # The public listener has no status page (and no link to it) ...
    browser.get(consumer.url + "/status")
    assert "Page not found" in browser.page_source
    assert not browser.find_elements(By.LINK_TEXT, "Status")
    # ... the operator listener has.
    browser.get(consumer.operator_url + "/status")
    rows = browser.find_elements(By.CSS_SELECTOR, "#producers tbody tr")
    assert len(rows) == 1 and "healthy" in rows[0].text and "closed" in rows[0].text
    assert browser.find_element(By.LINK_TEXT, "Status")
