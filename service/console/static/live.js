/*
 * Live updates of the reviewer console (service/live): listens to GET /console/live
 * (Server-Sent Events) and keeps the open page current without reloading it.
 *
 * - #live-status says "Live" while the stream is live; otherwise "Live updates
 *   unavailable — refreshing every 15 s", and the page's data is then refetched every
 *   15 s (the server's hello/mode frame says live=false when Redis is down; an
 *   EventSource error means the stream itself is gone).
 * - Queue page: a decided review leaves the table (or shows its new status) at once;
 *   then the current URL is refetched and `table#queue tbody` and `#severity-counts`
 *   swapped from it, so a new review matching the filters appears and the counts are
 *   right.
 * - Review page: when this review is decided elsewhere, `#review-status` says so and
 *   `fieldset#decision-fieldset` is disabled (what is typed in it is kept).
 * - Every change is announced in `#announcer` (aria-live=polite), in words.
 *
 * Plain JavaScript, no inline script anywhere (the CSP forbids it), no dependencies.
 */
(function () {
  "use strict";

  var STREAM_URL = "/console/live";
  var REFRESH_MS = 15000;
  var LIVE_TEXT = "Live";
  var FALLBACK_TEXT = "Live updates unavailable \u2014 refreshing every 15 s";
  var FINAL_STATUSES = { approved: true, rejected: true, modified: true };

  var body = document.body;
  var page = body.getAttribute("data-page") || "";
  var reviewId = body.getAttribute("data-review-id") || "";
  var statusEl = document.getElementById("live-status");
  var announcer = document.getElementById("announcer");

  var source = null;
  var live = null; // null: not known yet; true/false once the stream says
  var fallbackTimer = null;
  var reconnectTimer = null;
  var refreshing = false;
  var refreshAgain = false;

  // -- status and announcements ----------------------------------------------------

  function setStatus(text) {
    if (statusEl && statusEl.textContent !== text) {
      statusEl.textContent = text;
    }
  }

  function announce(text) {
    if (!announcer || !text) {
      return;
    }
    // Cleared first, so the same words said twice are announced twice.
    announcer.textContent = "";
    window.setTimeout(function () {
      announcer.textContent = text;
    }, 50);
  }

  function goLive() {
    var wasLive = live;
    live = true;
    setStatus(LIVE_TEXT);
    if (fallbackTimer !== null) {
      window.clearInterval(fallbackTimer);
      fallbackTimer = null;
    }
    // Events published while we were not listening are lost: catch up once.
    if (wasLive === false) {
      refresh();
      announce("Live updates restored.");
    }
  }

  function goFallback() {
    var wasLive = live;
    live = false;
    setStatus(FALLBACK_TEXT);
    if (fallbackTimer === null) {
      fallbackTimer = window.setInterval(function () {
        refresh();
      }, REFRESH_MS);
    }
    if (wasLive === true) {
      announce("Live updates unavailable; the page refreshes every 15 seconds.");
    }
  }

  // -- refetching the page's data --------------------------------------------------

  function swapElement(current, fresh) {
    if (current && fresh) {
      current.replaceWith(document.importNode(fresh, true));
      return true;
    }
    return false;
  }

  function swapQueue(doc) {
    var selected = document.querySelector("tr.queue-item.selected");
    var selectedId = selected ? selected.getAttribute("data-review-id") : null;
    var focusedInTable = !!(document.activeElement && document.activeElement.closest &&
      document.activeElement.closest("table#queue"));

    var tbody = document.querySelector("table#queue tbody");
    var freshBody = doc.querySelector("table#queue tbody");
    var swapped = swapElement(tbody, freshBody);
    swapElement(document.getElementById("severity-counts"), doc.getElementById("severity-counts"));
    if (!swapped) {
      // The queue became empty, or stopped being empty: the table and #queue-empty
      // come and go, so take the whole main content.
      swapElement(document.querySelector("main"), doc.querySelector("main"));
    }
    var nextPage = document.getElementById("next-page");
    var freshNext = doc.getElementById("next-page");
    if (nextPage && freshNext) {
      nextPage.setAttribute("href", freshNext.getAttribute("href"));
    }
    // Keep the keyboard selection (console.js: j/k) on the same review if it is still there.
    if (selectedId) {
      var row = document.querySelector('tr.queue-item[data-review-id="' + cssEscape(selectedId) + '"]');
      if (row) {
        row.classList.add("selected");
        var link = row.querySelector("a.review-link");
        if (focusedInTable && link) {
          link.focus();
        }
      }
    }
  }

  function swapReview(doc) {
    swapElement(document.getElementById("review-status"), doc.getElementById("review-status"));
    swapElement(document.getElementById("history"), doc.getElementById("history"));
    var fieldset = document.getElementById("decision-fieldset");
    var freshFieldset = doc.getElementById("decision-fieldset");
    if (fieldset && freshFieldset) {
      // Only its state: what the reviewer typed stays.
      fieldset.disabled = freshFieldset.disabled;
    }
  }

  function swapHealth(doc) {
    swapElement(document.getElementById("stats"), doc.getElementById("stats"));
  }

  // At most one fetch in flight and one start per second: a burst of events (a
  // scanner submitting many at once) costs each page one fetch a second, not one each.
  var MIN_REFRESH_GAP_MS = 1000;
  var lastRefreshStart = 0;
  var refreshTimer = null;
  var afterRefresh = [];

  function refresh(then) {
    if (then) {
      afterRefresh.push(then);
    }
    if (refreshing) {
      refreshAgain = true;
      return;
    }
    if (refreshTimer !== null) {
      return;
    }
    var wait = Math.max(0, lastRefreshStart + MIN_REFRESH_GAP_MS - Date.now());
    refreshTimer = window.setTimeout(fetchAndSwap, wait);
  }

  function fetchAndSwap() {
    refreshTimer = null;
    refreshing = true;
    lastRefreshStart = Date.now();
    var callbacks = afterRefresh;
    afterRefresh = [];
    window.fetch(window.location.href, {
      credentials: "same-origin",
      headers: { Accept: "text/html" },
      cache: "no-store"
    }).then(function (response) {
      if (!response.ok || response.redirected) {
        return; // signed out, or an error page: leave the page as it is
      }
      return response.text().then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        if (page === "queue") {
          swapQueue(doc);
        } else if (page === "review") {
          swapReview(doc);
        } else if (page === "health") {
          swapHealth(doc);
        }
      });
    }).catch(function () {
      // Offline for a moment: the next event or the next period tries again.
    }).then(function () {
      refreshing = false;
      callbacks.forEach(function (callback) {
        callback();
      });
      if (refreshAgain) {
        refreshAgain = false;
        refresh();
      }
    });
  }

  // -- review events -----------------------------------------------------------------

  function describe(event) {
    var what = (event.cve_id || "A review") + (event.package ? " in " + event.package : "");
    if (event.type === "review.submitted") {
      return "New " + (event.severity || "") + " review: " + what + ".";
    }
    return what + " was " + event.status + (event.decided_by ? " by " + event.decided_by : "") + ".";
  }

  function decidedText(event) {
    var text = event.status;
    if (event.decided_by) {
      text += " by " + event.decided_by;
    }
    if (event.decided_at) {
      text += " at " + formatTime(event.decided_at);
    }
    return text;
  }

  function onReview(event) {
    if (page === "queue") {
      if (event.type === "review.decided") {
        var row = document.querySelector(
          'tr.queue-item[data-review-id="' + cssEscape(event.review_id) + '"]');
        if (row) {
          if (FINAL_STATUSES[event.status]) {
            row.remove();
          } else {
            row.setAttribute("data-status", event.status);
          }
          announce(describe(event));
        }
        refresh();
      } else {
        // Announced only if it matches the page's filters, i.e. the fetched
        // queue shows it.
        refresh(function () {
          if (document.querySelector(
            'tr.queue-item[data-review-id="' + cssEscape(event.review_id) + '"]')) {
            announce(describe(event));
          }
        });
      }
    } else if (page === "review") {
      if (event.review_id === reviewId && event.type === "review.decided") {
        var status = document.getElementById("review-status");
        if (status) {
          status.textContent = decidedText(event);
        }
        var fieldset = document.getElementById("decision-fieldset");
        if (fieldset && FINAL_STATUSES[event.status]) {
          fieldset.disabled = true;
        }
        announce("This review was " + decidedText(event) + ".");
        refresh();
      }
    } else if (page === "health") {
      refresh();
    }
  }

  // -- the stream --------------------------------------------------------------------

  function parse(message) {
    try {
      return JSON.parse(message.data);
    } catch (e) {
      return null;
    }
  }

  function onMode(message) {
    var data = parse(message);
    if (data && data.live === true) {
      goLive();
    } else if (data) {
      goFallback();
    }
  }

  function connect() {
    reconnectTimer = null;
    if (!window.EventSource) {
      goFallback();
      return;
    }
    source = new window.EventSource(STREAM_URL);
    source.addEventListener("hello", onMode);
    source.addEventListener("mode", onMode);
    source.addEventListener("review", function (message) {
      var event = parse(message);
      if (event) {
        onReview(event);
      }
    });
    source.addEventListener("error", function () {
      goFallback();
      // CONNECTING: the browser retries by itself (the server's retry: hint). CLOSED:
      // it gave up (a 401 or a 503 while the server drains): try again later.
      if (source && source.readyState === window.EventSource.CLOSED && reconnectTimer === null) {
        source = null;
        reconnectTimer = window.setTimeout(connect, REFRESH_MS);
      }
    });
  }

  // -- helpers -------------------------------------------------------------------------

  function cssEscape(value) {
    if (window.CSS && window.CSS.escape) {
      return window.CSS.escape(value);
    }
    return String(value).replace(/["\\]/g, "\\$&");
  }

  function pad(n) {
    return n < 10 ? "0" + n : String(n);
  }

  // "2026-11-29 14:02 UTC", as the server renders decision times.
  function formatTime(iso) {
    var d = new Date(iso);
    if (isNaN(d.getTime())) {
      return iso;
    }
    return d.getUTCFullYear() + "-" + pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate()) +
      " " + pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes()) + " UTC";
  }

  // Only the pages with data to keep current listen; the sign-in and error pages
  // (no session yet, or none needed) do not.
  if (page !== "queue" && page !== "review" && page !== "health") {
    return;
  }

  window.addEventListener("pagehide", function () {
    if (source) {
      source.close();
      source = null;
    }
  });
  // Back from the browser's page cache: the stream was closed on the way out.
  window.addEventListener("pageshow", function (e) {
    if (e.persisted && source === null && reconnectTimer === null) {
      connect();
      refresh();
    }
  });

  connect();
})();
