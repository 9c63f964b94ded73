"""The dashboard in a real browser: headless Chromium driven by Selenium.

The engine runs in trial's reactor, as in every other test; Selenium's calls
block, so each runs in a thread (``deferToThread``) while the reactor goes
on serving the page, its event stream and its actions.  Every wait has a
timeout (:data:`WAIT`), and so has every test.

Chromium and its driver come from Debian's packages (``apt-get install
chromium chromium-driver``); without them these tests are skipped, saying
so.  Selenium Manager is never asked for anything: the browser and the
driver are named explicitly and ``SE_OFFLINE`` is set.
"""

from __future__ import annotations

import os
import shutil
from unittest import SkipTest

from selenium import webdriver
from selenium.common.exceptions import (NoSuchElementException,
                                        StaleElementReferenceException)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from twisted.internet import defer
from twisted.internet.threads import deferToThread

from tests.support import ReservedPort, waitFor
from tests.test_admin import admin
from tests.test_dashboard import DashboardTestCase
from tests.test_routing import channel

#: Seconds any one wait in the browser may take.
WAIT = 10


def _find(program):
    return shutil.which(program) or next(
        (path for path in (f"/usr/bin/{program}", f"/usr/lib/chromium/{program}")
         if os.access(path, os.X_OK)), None)


CHROMIUM = _find("chromium")
CHROMEDRIVER = _find("chromedriver")


def startBrowser():
    """A headless Chromium (blocking: call it in a thread)."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1280,800", "--no-first-run",
                     "--disable-extensions", "--disable-background-networking"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER,
                                              log_output=os.devnull), options=options)
    driver.set_page_load_timeout(WAIT)
    driver.set_script_timeout(WAIT)
    return driver


class BrowserTestCase(DashboardTestCase):
    """An engine with an admin listener, and a browser on its page."""

    timeout = 60

    def setUp(self):
        if CHROMIUM is None or CHROMEDRIVER is None:
            raise SkipTest("headless Chromium is not installed (no chromium or "
                           "chromedriver on PATH or in /usr/bin): apt-get install "
                           "chromium chromium-driver")
        # Selenium Manager must not look for (or download) anything.
        previous = os.environ.get("SE_OFFLINE")
        os.environ["SE_OFFLINE"] = "true"
        self.addCleanup(lambda: os.environ.pop("SE_OFFLINE") if previous is None
                        else os.environ.__setitem__("SE_OFFLINE", previous))
        super().setUp()

    @defer.inlineCallbacks
    def startChannels(self, listeners=None):
        """alpha: connected to the echo server (retrying only after 30 s once
        it has failed); beta: refused (waiting); gamma: on demand (idle)."""
        self.refused = ReservedPort()
        self.addCleanup(self.refused.close)
        echo = self.echoPort.getHost().port
        yield self.startEngine(
            listeners=listeners or admin(),
            channels=channel("alpha", echo, topicOut="alpha.out",
                             reconnectionTimeout="30")
            + channel("beta", self.refused.port, reconnectionTimeout="30")
            + channel("gamma", echo, permanent="false"),
            connected=("alpha",))
        yield waitFor(lambda: self.engine.channels["beta"].state == "waiting",
                      what="beta to wait")

    @defer.inlineCallbacks
    def openPage(self, path="/"):
        self.driver = yield deferToThread(startBrowser)
        # Registered last, so run first: the browser goes before the engine.
        self.addCleanup(deferToThread, self.driver.quit)
        yield deferToThread(self.driver.get, f"http://127.0.0.1:{self.port('admin')}{path}")

    def until(self, condition, what):
        """Wait (in a thread) until ``condition(driver)`` is true."""
        wait = WebDriverWait(self.driver, WAIT, poll_frequency=0.05, ignored_exceptions=(
            NoSuchElementException, StaleElementReferenceException))
        return deferToThread(wait.until, condition, f"timed out waiting for {what}")

    def rowState(self, name):
        """A channel row's data-state: call in the browser's thread."""
        return self.driver.find_element(
            By.CSS_SELECTOR, f'tr[data-channel="{name}"]').get_attribute("data-state")

    def waitState(self, name, *states):
        return self.until(lambda d: self.rowState(name) in states,
                          f"channel row {name} to show {' or '.join(states)}")

    def click(self, selector):
        return deferToThread(lambda: self.driver.find_element(
            By.CSS_SELECTOR, selector).click())


class ChannelTests(BrowserTestCase):
    """The channel table: states, live changes, Connect and Disconnect."""

    @defer.inlineCallbacks
    def test_statesListed(self):
        yield self.startChannels()
        yield self.openPage()
        yield self.waitState("alpha", "connected")
        yield self.waitState("beta", "waiting")
        yield self.waitState("gamma", "idle")
        states = yield deferToThread(lambda: {
            row.get_attribute("data-channel"): row.get_attribute("data-state")
            for row in self.driver.find_elements(By.CSS_SELECTOR, "tr[data-channel]")})
        self.assertEqual(states, {"alpha": "connected", "beta": "waiting",
                                  "gamma": "idle"})
        # Failing first: beta's row comes before the others.
        order = yield deferToThread(lambda: [
            row.get_attribute("data-channel")
            for row in self.driver.find_elements(By.CSS_SELECTOR, "tr[data-channel]")])
        self.assertEqual(order[0], "beta")
        badge = yield deferToThread(lambda: self.driver.find_element(
            By.CSS_SELECTOR, 'tr[data-channel="beta"] .state').get_attribute("class"))
        self.assertIn("state-waiting", badge)
        # The listeners, and alpha's topic-out.
        yield self.until(lambda d: d.find_element(By.CSS_SELECTOR,
                                                  'tr[data-listener="admin"]'),
                         "the admin listener's row")
        yield self.until(lambda d: d.find_element(By.CSS_SELECTOR,
                                                  'tr[data-topic="alpha.out"]'),
                         "the topic row of alpha.out")

    @defer.inlineCallbacks
    def test_serverStops(self):
        """The server going away turns its row to waiting, without a reload."""
        yield self.startChannels()
        yield self.openPage()
        yield self.waitState("alpha", "connected")
        marker = yield deferToThread(self.driver.execute_script,
                                     "return window.marker = 'same page'")
        yield self.stopEcho()
        yield self.waitState("alpha", "waiting")
        marker = yield deferToThread(self.driver.execute_script, "return window.marker")
        self.assertEqual(marker, "same page")

    @defer.inlineCallbacks
    def test_disconnectConnect(self):
        """Disconnect closes the connection (the server sees it) and the row
        goes to stopped; Connect brings it back."""
        yield self.startChannels()
        yield self.openPage()
        yield self.waitState("alpha", "connected")
        self.assertEqual(len(self.echo.connections), 1)
        yield self.click('tr[data-channel="alpha"] [data-action="disconnect"]')
        yield self.waitState("alpha", "stopped")
        yield waitFor(lambda: not self.echo.connections, what="the server to see the close")
        self.assertEqual(self.engine.channels["alpha"].state, "stopped")
        yield self.until(lambda d: d.find_element(
            By.CSS_SELECTOR, 'tr[data-channel="alpha"] [data-action="connect"]'
        ).is_enabled(), "the Connect button")
        yield self.click('tr[data-channel="alpha"] [data-action="connect"]')
        yield self.waitState("alpha", "connected")
        yield waitFor(lambda: len(self.echo.connections) == 1,
                      what="the server to see the new connection")


class ConsoleTests(BrowserTestCase):
    """The console box and the publish box."""

    @defer.inlineCallbacks
    def test_xmlcall(self):
        yield self.startChannels()
        yield self.openPage()

        def typeAndSend():
            box = self.driver.find_element(By.CSS_SELECTOR, "[data-console-input]")
            box.clear()
            box.send_keys('<xmlcall class="Media" method="status" requestId="s1">'
                          '<parameters><property name="channel" value="beta"/>'
                          '</parameters></xmlcall>')
            self.driver.find_element(By.CSS_SELECTOR, "[data-console-send]").click()

        yield deferToThread(typeAndSend)
        output = "[data-console-output]"
        yield self.until(lambda d: 'requestId="s1"' in d.find_element(
            By.CSS_SELECTOR, output).text, "the answer to s1")
        text = yield deferToThread(lambda: self.driver.find_element(
            By.CSS_SELECTOR, output).text)
        self.assertIn('status="OK"', text)
        self.assertIn('name="beta"', text)
        self.assertIn('state="waiting"', text)

        # Engine.help's first example, one click away.
        yield self.until(lambda d: d.find_element(By.CSS_SELECTOR, '[data-example="0"]'),
                         "the examples")
        yield self.click('[data-example="0"]')
        yield self.click("[data-console-send]")
        yield self.until(lambda d: "<pong/>" in d.find_element(
            By.CSS_SELECTOR, output).text, "the pong")
        self.assertEqual(self.engine.registry.calls[("Engine", "ping", "ok")], 1)

    @defer.inlineCallbacks
    def test_publish(self):
        """A message published from the page reaches a subscriber."""
        yield self.startChannels()
        received = []
        self.engine.broker.subscribe("demo", received.append)
        yield self.openPage()

        def publish():
            driver = self.driver
            driver.find_element(By.CSS_SELECTOR, "[data-publish-topic]").send_keys("demo")
            driver.find_element(By.CSS_SELECTOR, "[data-publish-message]").send_keys(
                "hello from the page")
            driver.find_element(By.CSS_SELECTOR, "[data-publish-send]").click()

        yield deferToThread(publish)
        yield waitFor(lambda: received, what="the message")
        self.assertEqual(received[0].body, b"hello from the page")
        yield self.until(lambda d: "published demo-1" in d.find_element(
            By.CSS_SELECTOR, "[data-publish-output]").text, "the answer")
        # The topic's row counts it.
        yield self.until(lambda d: d.find_element(
            By.CSS_SELECTOR, 'tr[data-topic="demo"] td:nth-child(2)').text == "1",
            "the topic row to count 1 published")


class LoginTests(BrowserTestCase):
    """An admin listener with a secret: the login form, then the page."""

    @defer.inlineCallbacks
    def test_login(self):
        secret = self.mktemp()
        with open(secret, "w") as f:
            f.write("browser-secret\n")
        yield self.startChannels(admin(auth="true", **{"auth.secret-file": secret}))
        yield self.openPage()

        def logIn(text):
            box = self.driver.find_element(By.CSS_SELECTOR, "[data-login-secret]")
            box.clear()
            box.send_keys(text)
            self.driver.find_element(By.CSS_SELECTOR, "[data-login-send]").click()

        yield deferToThread(logIn, "wrong")
        yield self.until(lambda d: "Wrong secret." in d.page_source, "the refusal")
        self.engine.listeners["admin"].factory.resource.throttle.succeeded("127.0.0.1")
        yield deferToThread(logIn, "browser-secret")
        yield self.waitState("alpha", "connected")
        cookies = yield deferToThread(self.driver.get_cookies)
        [cookie] = cookies
        self.assertTrue(cookie["httpOnly"])
        self.assertEqual(cookie["sameSite"], "Strict")
        self.assertNotIn("browser-secret", cookie["value"])
        # The event stream works with the cookie: a change shows.
        yield self.click('tr[data-channel="alpha"] [data-action="disconnect"]')
        yield self.waitState("alpha", "stopped")
