"""A real headless browser on the admin: Debian's chromium driven through its chromedriver by
selenium, against pytest-django's live server, logged in as an operator; screenshots go to
var/screenshots/ (git-ignored)."""

from __future__ import annotations

import base64
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model

SCREENSHOTS = Path(__file__).resolve().parents[2] / "var" / "screenshots"
WINDOW = (1280, 900)
PASSWORD = "operator-password-for-tests"
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={WINDOW[0]},{WINDOW[1]}"]


def _chromium() -> tuple[str, str] | None:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (binary, driver) if binary and driver else None


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One headless chromium for the session (skipped, saying why, where it is not installed)."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (requirements/dev.txt)")
    found = _chromium()
    if found is None:
        pytest.skip("chromium and chromedriver are not installed: apt-get install -y chromium chromium-driver")
    binary, driver_path = found
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    driver.set_window_size(*WINDOW)
    # The window's outer size includes no chrome when headless; make the page's viewport 1,280 wide.
    inner = driver.execute_script("return window.innerWidth")
    if inner != WINDOW[0]:
        driver.set_window_size(WINDOW[0] + (WINDOW[0] - inner), WINDOW[1])
    yield driver
    driver.quit()


@dataclass
class AdminPage:
    """The browser, logged in to the live server's admin, with what the tests look at."""

    driver: Any
    base_url: str

    def visit(self, path: str) -> None:
        self.driver.get(self.base_url + path)

    def wait_for(self, condition: Any, seconds: float = 10) -> Any:
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, seconds).until(condition)

    def click_and_wait(self, element: Any) -> None:
        """Click what leads to another page, and wait until that page is there."""
        from selenium.webdriver.support import expected_conditions

        element.click()
        self.wait_for(expected_conditions.staleness_of(element))

    def css(self, selector: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(self.driver.find_elements(By.CSS_SELECTOR, selector))

    def one(self, selector: str) -> Any:
        found = self.css(selector)
        assert found, f"nothing matches {selector!r} on {self.driver.current_url}"
        return found[0]

    def text(self, selector: str = "body") -> str:
        return str(self.one(selector).text)

    def scroll_width(self) -> int:
        return int(self.driver.execute_script("return document.documentElement.scrollWidth"))

    def window_width(self) -> int:
        return int(self.driver.execute_script("return window.innerWidth"))

    def viewport_width(self) -> int:
        """The width the page has, without the vertical scroll bar."""
        return int(self.driver.execute_script("return document.documentElement.clientWidth"))

    def box(self, element: Any) -> dict[str, float]:
        return dict(self.driver.execute_script("return arguments[0].getBoundingClientRect().toJSON()", element))

    def fully_inside_the_window(self, element: Any) -> bool:
        box = self.box(element)
        return bool(box["width"] > 0 and box["left"] >= 0 and box["right"] <= self.viewport_width())

    def messages(self) -> list[str]:
        return [str(element.text) for element in self.css("ul.messagelist li")]

    def screenshot(self, name: str) -> Path:
        """The whole page (not only the window) as var/screenshots/<name>.png."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        size = self.driver.execute_script(
            "return [document.documentElement.scrollWidth, document.documentElement.scrollHeight]"
        )
        shot = self.driver.execute_cdp_cmd(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1},
            },
        )
        path.write_bytes(base64.b64decode(shot["data"]))
        return path


@pytest.fixture
def operator_user(transactional_db: Any) -> Any:
    return get_user_model().objects.create_superuser("operator", "op@example.com", PASSWORD)


@pytest.fixture
def admin_page(operator_user: Any, live_server: Any, browser: Any) -> AdminPage:
    """Logged in through the admin's login form, as an operator would. (The test database is set
    up before the live server starts, so it is torn down after the server's connections close.)"""
    from selenium.webdriver.common.by import By

    browser.delete_all_cookies()
    page = AdminPage(browser, live_server.url)
    page.visit("/admin/login/?next=/admin/")
    browser.find_element(By.NAME, "username").send_keys(operator_user.username)
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    page.wait_for(lambda driver: driver.current_url.endswith("/admin/"))
    return page
