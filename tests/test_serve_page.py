"""The chat page at / in a real headless Chromium (Debian's `chromium`, driven by Playwright):
send, a streamed reply equal to the API's, Stop that frees the slot, regenerate, text that looks
like HTML shown as text, conversations kept across a reload, no page errors, a screenshot."""

from __future__ import annotations

import shutil
import time

import openai
import pytest
from serve_helpers import metric, save_tiny, serving

CHROMIUM = "/usr/bin/chromium"
XSS = '<img src=x onerror="window.__pwned=1">こんにちは<b>太字</b>'


@pytest.fixture(scope="module")
def browser():
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium package (apt-get install -y chromium), as .ci/run does")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def test_chat_page(browser, tmp_path):
    d = save_tiny(tmp_path / "tiny")
    with serving(d) as (url, _):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        short = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": XSS}], temperature=0, max_tokens=32)
        long_msgs = [{"role": "user", "content": XSS}, short.choices[0].message.model_dump(include={"role", "content"}),
                     {"role": "user", "content": "物語を書いて"}]  # fmt: skip
        full = client.chat.completions.create(model="tiny", messages=long_msgs, temperature=0, max_tokens=1600)
        assert full.choices[0].finish_reason == "length"  # so Stop below interrupts a reply still running

        page = browser.new_page()
        page.set_default_timeout(120_000)  # a cold browser on 2 busy cores; a hang still fails
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(url)
        page.get_by_test_id("model").filter(has_text="tiny").wait_for()
        page.get_by_test_id("temperature").fill("0")
        page.get_by_test_id("max_tokens").fill("32")
        page.get_by_test_id("prompt").fill(XSS)
        page.get_by_test_id("send").click()
        messages = page.get_by_test_id("message")
        page.get_by_test_id("stop").wait_for(state="attached")
        page.wait_for_function("document.querySelector('[data-testid=send]').disabled === false && "
                               "document.querySelectorAll('[data-testid=message]').length === 2")  # fmt: skip
        assert messages.count() == 2
        assert messages.nth(0).locator(".text").text_content() == XSS  # shown as text
        assert page.locator("#messages img, #messages b").count() == 0
        assert page.evaluate("window.__pwned") is None
        assert messages.nth(1).locator(".text").text_content() == short.choices[0].message.content  # the stream, assembled
        assert "tokens/s" in page.get_by_test_id("stats").text_content()

        # Stop: a long reply is interrupted, and the server frees its slot
        before = metric(url, 'orizuru_requests_finished_total{reason="cancelled"}')
        page.get_by_test_id("max_tokens").fill("1600")
        page.get_by_test_id("prompt").fill(long_msgs[2]["content"])
        # Stop is pressed from inside the page at the first streamed text: a click from the test
        # process can come after an idle machine has streamed all 1,600 tokens (Stop then disabled)
        page.evaluate("""() => { const obs = new MutationObserver(() => {
            const reply = document.querySelectorAll('[data-testid=message]')[3], stop = document.querySelector('[data-testid=stop]');
            if (reply && reply.textContent > '' && !stop.disabled) { obs.disconnect(); stop.click(); } });
          obs.observe(document.getElementById('messages'), {childList: true, subtree: true, characterData: true}); }""")
        page.get_by_test_id("send").click()
        page.wait_for_function("(document.querySelectorAll('[data-testid=message]')[3] || {}).textContent > '' && "
                               "document.querySelector('[data-testid=stop]').disabled")  # fmt: skip
        partial = messages.nth(3).locator(".text").text_content()
        assert 0 < len(partial) < len(full.choices[0].message.content) and full.choices[0].message.content.startswith(partial)
        t0 = time.monotonic()
        while metric(url, "orizuru_running_slots") > 0:
            assert time.monotonic() - t0 < 2.0, "the stopped request still holds its slot"
            time.sleep(0.02)
        assert metric(url, 'orizuru_requests_finished_total{reason="cancelled"}') == before + 1

        # regenerate: the last answer again, whole this time (greedy, 24 tokens)
        page.get_by_test_id("max_tokens").fill("24")
        page.get_by_test_id("regenerate").click()
        page.wait_for_function("document.querySelector('[data-testid=send]').disabled === false")
        regen = client.chat.completions.create(model="tiny", messages=long_msgs, temperature=0, max_tokens=24)
        assert messages.count() == 4
        assert messages.nth(3).locator(".text").text_content() == regen.choices[0].message.content

        page.reload()  # kept in localStorage
        page.get_by_test_id("message").nth(3).wait_for()
        assert page.get_by_test_id("message").nth(0).locator(".text").text_content() == XSS
        page.screenshot(path=str(tmp_path / "chat.png"), full_page=True)
        assert (tmp_path / "chat.png").stat().st_size > 1000
        assert errors == []
        print(f"screenshot: {tmp_path / 'chat.png'}")
