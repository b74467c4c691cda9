"""The reviewer console in a real browser: headless Chromium (Debian's, through its
chromedriver) against `python -m service serve` on a loopback port.

What a reviewer does, end to end: sign in with a key, filter the queue, open a review
from the keyboard, read the diff with its line numbers, approve with a justification
and see the outcome; a colleague's queue drops the decided review without a reload;
a viewer cannot decide (no form, and a forged POST is refused); HTML and script in
every text an APV or a decision carries stays text; sign-out ends the session on the
server; the Content-Security-Policy stops inline script. The tests find elements by
the ids and classes the console's templates promise (service/console/templates): the
same names live.js and console.js rely on.

Reviews are seeded through the JSON API with a producer key, and what the console did
is checked through the JSON API too, never only on the page that did it.
"""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlsplit

from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.select import Select

from tests.console.samples import RECORD_PATCH, apv
from tests.console.served import ConsoleKeys, Served, sign_in, wait

# The fixtures (a served console per module, headless Chromium per test).
pytest_plugins = ["tests.console.browser"]

# The issue asks for "within a second"; the bound leaves room for a shared two-core
# machine (the measured figure is printed with -s).
LIVE_BOUND_SECONDS = 3.0

SCRIPT_PAYLOAD = "<script>window.__xss_{where} = 1</script>"
IMG_PAYLOAD = '"><img src=x onerror="window.__xss_{where} = 1">'


# -- page helpers -------------------------------------------------------------------


def path_of(driver: WebDriver) -> str:
    return urlsplit(driver.current_url).path


def queue_rows(driver: WebDriver) -> dict[str, WebElement]:
    """The queue table's rows by review id."""
    rows = driver.find_elements(By.CSS_SELECTOR, "table#queue tbody tr.queue-item")
    return {row.get_attribute("data-review-id") or "": row for row in rows}


def row_ids(driver: WebDriver) -> set[str]:
    """The ids in the queue table now; empty while the table is being swapped."""
    try:
        return set(queue_rows(driver))
    except StaleElementReferenceException:
        return set()


def severity_count(driver: WebDriver, severity: str) -> int:
    cell = driver.find_element(By.CSS_SELECTOR, f"#severity-counts [data-severity={severity}]")
    digits = re.findall(r"\d+", cell.text)
    assert digits, f"no count for {severity}: {cell.text!r}"
    return int(digits[-1])


def text_of(driver: WebDriver, css: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, css).text


def press(driver: WebDriver, keys: str) -> None:
    """Type at whatever has the focus, as a user at the keyboard would."""
    ActionChains(driver).send_keys(keys).perform()


def open_review(driver: WebDriver, served: Served, review_id: str) -> None:
    driver.get(f"{served.url}/console/reviews/{review_id}")
    wait(driver).until(lambda d: d.find_elements(By.ID, "review-status"))


def submit_decision(driver: WebDriver, decision: str, justification: str) -> None:
    driver.find_element(By.ID, f"decision-{decision}").click()
    box = driver.find_element(By.ID, "justification")
    box.clear()
    box.send_keys(justification)
    old = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(By.ID, "submit-decision").click()
    # A 303 back to the review page: wait for the new document, then its outcome.
    wait(driver).until(lambda d: _stale(old))
    wait(driver).until(lambda d: d.find_elements(By.ID, "decision-result"))


def _stale(element: WebElement) -> bool:
    try:
        element.tag_name  # noqa: B018 (touching it raises once the page has changed)
    except StaleElementReferenceException:
        return True
    return False


def fetch_status(driver: WebDriver, url: str, form: dict[str, str]) -> int:
    """POST ``form`` (urlencoded) from inside the page with its cookies, as a forged
    form or script would; the HTTP status (redirects not followed: 0)."""
    status = driver.execute_async_script(
        """
        const [url, fields, done] = arguments;
        fetch(url, {method: 'POST', body: new URLSearchParams(fields),
                    credentials: 'same-origin', redirect: 'manual'})
          .then(r => done(r.status), e => done(-1));
        """,
        url,
        form,
    )
    return int(status)


def csrf_token(driver: WebDriver) -> str:
    """The session's CSRF token, from the sign-out form every page carries."""
    field = driver.find_element(By.CSS_SELECTOR, "form#sign-out-form input[name=csrf_token]")
    token = field.get_attribute("value") or ""
    assert token
    return token


def seed(served: Served, **changes: Any) -> dict[str, Any]:
    return served.submit(apv(**changes))


# -- the reviewer's path ----------------------------------------------------------------


def test_reviewer_filters_opens_reads_diff_and_approves(
    console: Served, browser: WebDriver
) -> None:
    critical = seed(console, severity="critical", cvss_score=9.8, cve_id="CVE-2026-0001",
                    package={"name": "libxml2", "version": "2.9.14", "ecosystem": "debian"})
    high = seed(console, severity="high", cvss_score=8.1, cve_id="CVE-2026-0002")
    medium = seed(console, severity="medium", cvss_score=5.3, cve_id="CVE-2026-0003")

    sign_in(browser, console, console.keys.reviewer)
    assert text_of(browser, "#whoami") == f"{ConsoleKeys.REVIEWER_NAME} (reviewer)"
    wait(browser).until(lambda d: row_ids(d) == {critical["id"], high["id"], medium["id"]})
    assert [severity_count(browser, s) for s in ("critical", "high", "medium", "low")] == [1, 1, 1, 0]
    critical_row = queue_rows(browser)[critical["id"]]
    assert "critical" in critical_row.text  # in words, not colour alone
    assert "CVE-2026-0001" in critical_row.text and "libxml2" in critical_row.text
    assert re.search(r"\d+\s*(s|min|h|d)\b", critical_row.text), critical_row.text  # its age

    # Filter by severity through the form.
    Select(browser.find_element(By.CSS_SELECTOR, "#queue-filters select[name=severity]")
           ).select_by_value("critical")
    browser.find_element(By.ID, "apply-filters").click()
    wait(browser).until(lambda d: "severity=critical" in d.current_url)
    wait(browser).until(lambda d: row_ids(d) == {critical["id"]})
    assert {r.get_attribute("data-severity") for r in queue_rows(browser).values()} == {"critical"}

    # Open it from the keyboard: j selects the first row, o opens it.
    browser.find_element(By.TAG_NAME, "body").click()
    press(browser, "j")
    wait(browser).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, f"tr.queue-item.selected[data-review-id='{critical['id']}']")
    )
    press(browser, "o")
    wait(browser).until(lambda d: path_of(d) == f"/console/reviews/{critical['id']}")
    wait(browser).until(lambda d: d.find_elements(By.ID, "diff"))
    body = browser.find_element(By.TAG_NAME, "body")
    assert body.get_attribute("data-page") == "review"
    assert body.get_attribute("data-review-id") == critical["id"]

    fields = text_of(browser, "dl#apv-fields")
    for value in ("CVE-2026-0001", "libxml2", "2.9.14", "APV-OPENSSL-0042", "oraculo"):
        assert value in fields, (value, fields)
    scores = text_of(browser, "#scores")
    for value in ("9.8", "0.91", "0.82"):
        assert value in scores, (value, scores)
    assert "well-formed CVE identifier" in text_of(browser, "#validation-results")
    assert "pending" in text_of(browser, "#review-status").lower()

    # The diff: every line of the patch, with its kind and its line numbers.
    rows = browser.find_elements(By.CSS_SELECTOR, "table#diff tr.diff-line")

    def line(row: WebElement) -> tuple[str, str, str, str]:
        kind = next(
            k for k in ("added", "removed", "context", "hunk", "meta")
            if k in (row.get_attribute("class") or "").split()
        )
        cells = [row.find_elements(By.CSS_SELECTOR, f"td.{c}") for c in ("line-old", "line-new")]
        old, new = (c[0].text.strip() if c else "" for c in cells)
        return kind, old, new, row.find_element(By.CSS_SELECTOR, "td.code").text

    seen = [line(r) for r in rows]
    body_lines = [s for s in seen if s[0] in ("added", "removed", "context")]
    assert [(k, o, n) for k, o, n, _ in body_lines] == [
        ("context", "10", "10"),
        ("removed", "11", ""),
        ("added", "", "11"),
        ("added", "", "12"),
        ("context", "12", "13"),
        ("context", "13", "14"),
    ], seen
    # The sign stays in the text: a diff read without colour is still a diff.
    assert body_lines[1][3].startswith("-") and "if (len > MAX_LEN)" in body_lines[1][3]
    assert body_lines[2][3].startswith("+") and "if (len >= MAX_LEN) {" in body_lines[2][3]
    assert any(k == "hunk" and "@@ -10,4 +10,5 @@" in code for k, _, _, code in seen), seen
    assert len(seen) == len(RECORD_PATCH.splitlines()), seen
    code_font = browser.find_element(By.CSS_SELECTOR, "table#diff td.code").value_of_css_property(
        "font-family"
    )
    assert "mono" in code_font.lower() or "courier" in code_font.lower(), code_font
    # The code gets the room, the line numbers only what they need.
    widths = browser.execute_script(
        "return [...document.querySelector('table#diff tr.diff-line').cells]"
        ".map(c => c.getBoundingClientRect().width)"
    )
    assert widths[2] >= 0.7 * sum(widths), f"old, new, code column widths: {widths}"

    # d focuses the decision form's first radio; approve with a justification.
    press(browser, "d")
    wait(browser).until(
        lambda d: d.switch_to.active_element.get_attribute("id") == "decision-approve"
    )
    justification = "Bound is now inclusive; the fuzzer corpus no longer overflows."
    submit_decision(browser, "approve", justification)
    assert "approved" in text_of(browser, "#decision-result").lower()
    status = text_of(browser, "#review-status")
    assert re.search(rf"approved by {ConsoleKeys.REVIEWER_NAME}\b", status, re.I), status
    history = text_of(browser, "ol#history")
    assert justification in history and ConsoleKeys.REVIEWER_NAME in history, history
    assert browser.find_element(By.ID, "decision-fieldset").get_attribute("disabled") is not None

    # The JSON API agrees: one decision, by alice, with her words.
    stored = console.review(critical["id"])
    assert stored["status"] == "approved"
    assert [(d["decision"], d["reviewer"], d["justification"]) for d in stored["decisions"]] == [
        ("approve", ConsoleKeys.REVIEWER_NAME, justification)
    ]

    # u goes back to the queue, where the decided review is no longer open.
    browser.find_element(By.TAG_NAME, "body").click()
    press(browser, "u")
    wait(browser).until(lambda d: path_of(d) == "/console/queue")
    browser.get(f"{console.url}/console/queue")
    wait(browser).until(lambda d: row_ids(d) == {high["id"], medium["id"]})


def test_a_missing_justification_is_explained_and_modify_stores_the_edited_patch(
    console: Served, browser: WebDriver
) -> None:
    review = seed(console)
    sign_in(browser, console, console.keys.reviewer)
    open_review(browser, console, review["id"])

    # Reject needs a justification: said in words, nothing stored.
    submit_decision(browser, "reject", "")
    errors = browser.find_element(By.ID, "form-errors")
    assert errors.get_attribute("role") == "alert" and "justification" in errors.text.lower()
    stored = console.review(review["id"])
    assert stored["status"] == "pending" and stored["decisions"] == []

    # Modify: the reviewer edits the patch in the form's editor.
    editor = browser.find_element(By.ID, "patch")
    edited = RECORD_PATCH.replace("len >= MAX_LEN", "len >= MAX_LEN - 1")
    assert edited != RECORD_PATCH
    editor.clear()
    editor.send_keys(edited)
    submit_decision(browser, "modify", "Off by one: the header byte counts too.")
    assert "modified" in text_of(browser, "#decision-result").lower()
    assert "modified by alice" in text_of(browser, "#review-status").lower()
    stored = console.review(review["id"])
    assert stored["status"] == "modified"
    [decision] = stored["decisions"]
    assert decision["modifications"]["patch"].strip() == edited.strip()
    assert decision["justification"] == "Off by one: the header byte counts too."


def test_second_session_sees_the_decided_review_leave_without_reloading(
    console: Served, open_browser: Callable[[], WebDriver]
) -> None:
    decided = seed(console, cve_id="CVE-2026-1001")
    staying = seed(console, cve_id="CVE-2026-1002")

    watcher = open_browser()
    sign_in(watcher, console, console.keys.viewer)
    wait(watcher).until(lambda d: row_ids(d) == {decided["id"], staying["id"]})
    # live.js says so once the event stream is open (its first frame).
    wait(watcher).until(lambda d: text_of(d, "#live-status").strip() == "Live")
    watcher.execute_script("window.__hitlMarker = 'no reload'")
    queue_url = watcher.current_url

    decider = open_browser()
    sign_in(decider, console, console.keys.reviewer)
    open_review(decider, console, decided["id"])
    decider.find_element(By.ID, "decision-approve").click()
    decider.find_element(By.ID, "justification").send_keys("Checked against upstream.")
    clicked = time.monotonic()
    decider.find_element(By.ID, "submit-decision").click()

    wait(watcher, LIVE_BOUND_SECONDS + 5).until(lambda d: decided["id"] not in row_ids(d))
    latency = time.monotonic() - clicked
    print(f"decided review left the other queue {latency:.2f} s after the click")
    assert latency < LIVE_BOUND_SECONDS, latency
    assert watcher.execute_script("return window.__hitlMarker") == "no reload"
    assert watcher.current_url == queue_url
    assert row_ids(watcher) == {staying["id"]}
    # Said in words for screen readers, not only by a row vanishing.
    wait(watcher, 3).until(lambda d: text_of(d, "#announcer").strip() != "")
    assert console.review(decided["id"])["status"] == "approved"


def test_open_review_shows_someone_elses_decision_live_and_a_stale_form_gets_the_conflict(
    console: Served, browser: WebDriver
) -> None:
    review = seed(console)
    sign_in(browser, console, console.keys.reviewer)
    open_review(browser, console, review["id"])
    wait(browser).until(lambda d: text_of(d, "#live-status").strip() == "Live")
    browser.execute_script("window.__hitlMarker = 'no reload'")
    assert browser.find_element(By.ID, "decision-fieldset").get_attribute("disabled") is None

    # Someone else approves through the API while alice is reading.
    other = console.keys.other_reviewer
    assert console.decide(review["id"], other, {"decision": "approve"}) == 200

    wait(browser, LIVE_BOUND_SECONDS + 5).until(
        lambda d: re.search(rf"approved by {ConsoleKeys.OTHER_REVIEWER_NAME}\b",
                            text_of(d, "#review-status"), re.I)
    )
    wait(browser, 3).until(
        lambda d: d.find_element(By.ID, "decision-fieldset").get_attribute("disabled") is not None
    )
    assert browser.execute_script("return window.__hitlMarker") == "no reload"

    # A form sent from a page that never heard (live updates down): the same fields,
    # outside the disabled fieldset. The answer names who decided, in words.
    browser.execute_script(
        """
        const old = document.getElementById('decision-form');
        const form = document.createElement('form');
        form.method = 'post';
        form.action = old.action;
        const fields = {csrf_token: old.querySelector('input[name=csrf_token]').value,
                        decision: 'reject', justification: 'Breaks renegotiation.'};
        for (const [name, value] of Object.entries(fields)) {
          const input = document.createElement('input');
          input.type = 'hidden'; input.name = name; input.value = value;
          form.appendChild(input);
        }
        document.body.appendChild(form);
        form.submit();
        """
    )
    wait(browser).until(
        lambda d: "already approved" in (
            d.find_elements(By.ID, "decision-result") or [d.find_element(By.TAG_NAME, "body")]
        )[0].text.lower()
    )
    result = text_of(browser, "#decision-result")
    assert ConsoleKeys.OTHER_REVIEWER_NAME in result, result
    stored = console.review(review["id"])
    assert stored["status"] == "approved" and len(stored["decisions"]) == 1


# -- accessibility --------------------------------------------------------------------

UNLABELLED_CONTROLS = """
    return [...document.querySelectorAll('input, select, textarea')]
      .filter(el => el.type !== 'hidden')
      .filter(el => el.labels.length === 0 || ![...el.labels].some(l => l.textContent.trim()))
      .map(el => el.outerHTML.slice(0, 120));
"""


def test_every_control_has_a_label_and_keyboard_focus_is_visible(
    console: Served, browser: WebDriver
) -> None:
    review = seed(console)
    browser.get(f"{console.url}/console/sign-in")
    assert browser.execute_script(UNLABELLED_CONTROLS) == []
    assert browser.find_element(By.TAG_NAME, "html").get_attribute("lang")

    sign_in(browser, console, console.keys.reviewer)
    wait(browser).until(lambda d: review["id"] in row_ids(d))
    assert browser.execute_script(UNLABELLED_CONTROLS) == []
    # j puts the focus on the row's link, and the focus can be seen.
    browser.find_element(By.TAG_NAME, "body").click()
    press(browser, "j")
    wait(browser).until(
        lambda d: "review-link" in (d.switch_to.active_element.get_attribute("class") or "")
    )
    focus = browser.execute_script(
        "const s = getComputedStyle(document.activeElement);"
        "return [s.outlineStyle, s.outlineWidth, s.boxShadow];"
    )
    assert (focus[0] != "none" and focus[1] != "0px") or focus[2] != "none", focus

    open_review(browser, console, review["id"])
    assert browser.execute_script(UNLABELLED_CONTROLS) == []
    # Status in words, announced to screen readers: role=status regions exist.
    assert browser.find_element(By.ID, "live-status").get_attribute("role") == "status"
    assert browser.find_element(By.ID, "announcer").get_attribute("aria-live") == "polite"


# -- roles and forged requests ------------------------------------------------------


def test_viewer_gets_no_decision_form_and_a_forged_post_is_refused(
    console: Served, browser: WebDriver
) -> None:
    review = seed(console)
    sign_in(browser, console, console.keys.viewer)
    assert text_of(browser, "#whoami") == f"{ConsoleKeys.VIEWER_NAME} (viewer)"
    open_review(browser, console, review["id"])
    assert browser.find_elements(By.ID, "decision-form") == []
    assert browser.find_elements(By.ID, "submit-decision") == []
    assert "Viewers can read reviews but not decide." in text_of(browser, "#viewer-note")

    # The viewer's own session and CSRF token, a well-formed decision: still refused.
    status = fetch_status(
        browser,
        f"/console/reviews/{review['id']}/decision",
        {"csrf_token": csrf_token(browser), "decision": "approve", "justification": "forged"},
    )
    assert status == 403, status
    stored = console.review(review["id"])
    assert stored["status"] == "pending" and stored["decisions"] == []


def test_a_decision_post_without_the_sessions_csrf_token_is_refused(
    console: Served, browser: WebDriver
) -> None:
    review = seed(console)
    sign_in(browser, console, console.keys.reviewer)
    open_review(browser, console, review["id"])
    url = f"/console/reviews/{review['id']}/decision"
    decision = {"decision": "approve", "justification": "forged"}
    assert fetch_status(browser, url, decision) == 403
    assert fetch_status(browser, url, {**decision, "csrf_token": "A" * 43}) == 403
    stored = console.review(review["id"])
    assert stored["status"] == "pending" and stored["decisions"] == []
    # The form's own token is accepted: the refusals above were about the token.
    token = browser.find_element(
        By.CSS_SELECTOR, "form#decision-form input[name=csrf_token]"
    ).get_attribute("value")
    assert fetch_status(browser, url, {**decision, "csrf_token": token or ""}) == 0  # 303
    assert console.review(review["id"])["status"] == "approved"


# -- hostile content ----------------------------------------------------------------


def test_html_and_script_in_an_apv_and_a_justification_stay_inert_text(
    console: Served, browser: WebDriver
) -> None:
    package_name = IMG_PAYLOAD.format(where="package")
    source = SCRIPT_PAYLOAD.format(where="source")
    apv_code = IMG_PAYLOAD.format(where="apv_code")
    patch_script = SCRIPT_PAYLOAD.format(where="patch")
    patch_img = IMG_PAYLOAD.format(where="patch_img")
    patch = (
        "--- a/src/render.c\n"
        "+++ b/src/render.c\n"
        "@@ -1,2 +1,3 @@\n"
        f" /* {patch_script} */\n"
        f"-const char *banner = \"{patch_img}\";\n"
        "+const char *banner = \"\";\n"
        "+/* </td></tr></table><script>window.__xss_patch_table = 1</script> */\n"
    )
    justification = SCRIPT_PAYLOAD.format(where="justification") + IMG_PAYLOAD.format(
        where="justification_img"
    )
    review = seed(
        console, apv_code=apv_code, source=source, patch=patch,
        package={"name": package_name, "version": "1.0", "ecosystem": "debian"},
    )
    # Escalated: still in the (open) queue, and the justification is in the history.
    assert console.decide(
        review["id"], console.keys.other_reviewer,
        {"decision": "escalate", "justification": justification},
    ) == 200

    sign_in(browser, console, console.keys.reviewer)
    wait(browser).until(lambda d: review["id"] in row_ids(d))
    row_text = queue_rows(browser)[review["id"]].text
    assert package_name in row_text and source in row_text, row_text
    assert_inert(browser)

    open_review(browser, console, review["id"])
    wait(browser).until(lambda d: d.find_elements(By.ID, "diff"))
    fields = text_of(browser, "dl#apv-fields")
    for shown in (package_name, source, apv_code):
        assert shown in fields, (shown, fields)
    diff = text_of(browser, "table#diff")
    for shown in (patch_script, patch_img, "</td></tr></table><script>"):
        assert shown in diff, (shown, diff)
    assert justification in text_of(browser, "ol#history")
    # The patch editor of the decision form holds the patch as text too.
    editor = browser.find_element(By.ID, "patch").get_attribute("value") or ""
    assert patch_script in editor and patch_img in editor
    assert_inert(browser)


def assert_inert(driver: WebDriver) -> None:
    """No payload ran, and none became an element: no script with a payload, no
    img[src=x], no element with an onerror attribute; and the browser reported no CSP
    violation (which a payload parsed as HTML would have caused, blocked or not)."""
    found = driver.execute_script(
        """
        return {
          flags: Object.keys(window).filter(k => k.startsWith('__xss_')),
          scripts: [...document.scripts].filter(s => s.textContent.includes('__xss_')).length,
          images: document.querySelectorAll('img[src="x"]').length,
          handlers: document.querySelectorAll('[onerror]').length,
        };
        """
    )
    assert found == {"flags": [], "scripts": 0, "images": 0, "handlers": 0}, found
    violations = [
        e["message"] for e in driver.get_log("browser") if "Content Security Policy" in e["message"]
    ]
    assert violations == [], violations


# -- sessions and headers -------------------------------------------------------------


def test_sign_in_refuses_a_wrong_key_and_never_redirects_off_site(
    console: Served, browser: WebDriver
) -> None:
    browser.get(f"{console.url}/console/sign-in")
    browser.find_element(By.ID, "api-key").send_keys("hitl_00000000_" + "x" * 43)
    browser.find_element(By.ID, "sign-in").click()
    wait(browser).until(lambda d: d.find_elements(By.ID, "form-error"))
    error = browser.find_element(By.ID, "form-error")
    assert error.get_attribute("role") == "alert" and error.text.strip()
    assert path_of(browser) == "/console/sign-in"
    assert browser.get_cookie("hitl_session") is None

    # A page asked for before signing in sends to sign-in, and back to it after.
    review = seed(console)
    browser.get(f"{console.url}/console/reviews/{review['id']}")
    wait(browser).until(lambda d: path_of(d) == "/console/sign-in")
    assert "next=" in browser.current_url
    browser.find_element(By.ID, "api-key").send_keys(console.keys.viewer)
    browser.find_element(By.ID, "sign-in").click()
    wait(browser).until(lambda d: path_of(d).startswith("/console/") and path_of(d) != "/console/sign-in")
    assert path_of(browser) == f"/console/reviews/{review['id']}"

    # next= pointing elsewhere is ignored: sign-in lands on the console.
    browser.delete_all_cookies()
    browser.get(f"{console.url}/console/sign-in?next={quote('//example.org/x', safe='')}")
    browser.find_element(By.ID, "api-key").send_keys(console.keys.viewer)
    browser.find_element(By.ID, "sign-in").click()
    wait(browser).until(lambda d: path_of(d) != "/console/sign-in")
    parts = urlsplit(browser.current_url)
    assert (parts.netloc, parts.path.startswith("/console/")) == (f"127.0.0.1:{console.port}", True)


def test_sign_out_ends_the_session_on_the_server(console: Served, browser: WebDriver) -> None:
    sign_in(browser, console, console.keys.reviewer)
    cookie = browser.get_cookie("hitl_session")
    assert cookie is not None
    assert cookie["httpOnly"] is True and cookie.get("sameSite") == "Strict", cookie
    assert cookie["path"].startswith("/console")
    # The key itself is nowhere the page's script or the cookie can reach.
    assert console.keys.reviewer not in cookie["value"]
    stored = browser.execute_script(
        "return document.cookie + JSON.stringify(localStorage) + JSON.stringify(sessionStorage)"
    )
    assert "hitl_session" not in stored and console.keys.reviewer not in stored

    browser.find_element(By.ID, "sign-out").click()
    wait(browser).until(lambda d: path_of(d) == "/console/sign-in")
    assert browser.get_cookie("hitl_session") is None

    # Back, or the queue's address again: the sign-in page, not the queue.
    browser.back()
    wait(browser).until(lambda d: path_of(d) == "/console/sign-in")
    browser.get(f"{console.url}/console/queue")
    wait(browser).until(lambda d: path_of(d) == "/console/sign-in")

    # The old cookie replayed by hand: the session is gone on the server, not just
    # forgotten by this browser.
    assert replay_cookie(console, "/console/queue", cookie["value"]) == (
        303, "/console/sign-in"
    )


def replay_cookie(served: Served, path: str, session_id: str) -> tuple[int, str]:
    """(status, Location path) of a GET sent with this session cookie, not followed."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    request = urllib.request.Request(served.url + path, headers={"Cookie": f"hitl_session={session_id}"})
    try:
        with opener.open(request, timeout=10) as resp:
            return resp.status, urlsplit(resp.headers.get("Location", "")).path
    except urllib.error.HTTPError as exc:
        return exc.code, urlsplit(exc.headers.get("Location", "")).path


def test_content_security_policy_stops_inline_script(console: Served, browser: WebDriver) -> None:
    with urllib.request.urlopen(f"{console.url}/console/sign-in", timeout=10) as resp:
        csp = resp.headers["Content-Security-Policy"]
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["X-Frame-Options"] == "DENY"
    directives = {d.split()[0]: d.split()[1:] for d in csp.split(";") if d.strip()}
    assert directives["script-src"] == ["'self'"], csp
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp

    inject = """
        window.__violations = [];
        document.addEventListener('securitypolicyviolation',
                                  e => window.__violations.push(e.violatedDirective));
        const script = document.createElement('script');
        script.textContent = 'window.__inlineRan = true';
        document.body.appendChild(script);
        const button = document.createElement('button');
        button.id = 'injected';
        button.setAttribute('onclick', 'window.__handlerRan = true');
        button.textContent = 'injected';
        document.body.appendChild(button);
        button.click();
    """
    ran = "return [window.__inlineRan === true, window.__handlerRan === true]"
    # The check can fail: on a page without the policy the same injection runs.
    browser.get("about:blank")
    browser.execute_script(inject)
    assert browser.execute_script(ran) == [True, True]

    sign_in(browser, console, console.keys.reviewer)
    browser.execute_script(inject)
    # Wait for the browser to report both refusals, then look: nothing ran.
    wait(browser, 5).until(lambda d: len(d.execute_script("return window.__violations")) >= 2)
    assert browser.execute_script(ran) == [False, False]
    assert any(
        "Content Security Policy" in e["message"] for e in browser.get_log("browser")
    )
    # The console's own scripts come from /console/static; no inline script is served.
    assert browser.find_elements(By.CSS_SELECTOR, "script[src='/console/static/console.js']")
    with_no_inline = browser.execute_script(
        "return [...document.scripts].filter(s => !s.src && s.textContent.trim()"
        " && !s.textContent.includes('__inlineRan')).length"
    )
    assert with_no_inline == 0
