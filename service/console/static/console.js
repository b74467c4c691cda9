// hitl reviewer console: keyboard shortcuts. Plain JavaScript, no build step; served
// from /console/static so the Content-Security-Policy needs no inline script.
//   Queue:  j / k move the selection, Enter or o opens the selected review.
//   Review: d focuses the decision form, u goes back to the queue.
(function () {
  "use strict";

  function typing(event) {
    var target = event.target;
    if (!target || !target.tagName) return false;
    var tag = target.tagName.toLowerCase();
    if (tag === "input") {
      // Radios and checkboxes take no text: the shortcuts still work from them.
      var type = (target.getAttribute("type") || "text").toLowerCase();
      return type !== "radio" && type !== "checkbox" && type !== "submit" && type !== "button";
    }
    return tag === "textarea" || tag === "select" || target.isContentEditable;
  }

  function announce(text) {
    var announcer = document.getElementById("announcer");
    if (announcer) announcer.textContent = text;
  }

  function queueRows() {
    return Array.prototype.slice.call(document.querySelectorAll("#queue tbody tr.queue-item"));
  }

  function select(row) {
    queueRows().forEach(function (r) { r.classList.remove("selected"); });
    if (!row) return;
    row.classList.add("selected");
    var link = row.querySelector("a.review-link");
    if (link) link.focus();
  }

  function move(step) {
    var rows = queueRows();
    if (rows.length === 0) return;
    var current = rows.findIndex(function (r) { return r.classList.contains("selected"); });
    var next = current === -1 ? (step > 0 ? 0 : rows.length - 1)
                              : Math.min(rows.length - 1, Math.max(0, current + step));
    select(rows[next]);
  }

  function openSelected() {
    var row = document.querySelector("#queue tbody tr.queue-item.selected");
    var link = row && row.querySelector("a.review-link");
    if (link) window.location.assign(link.getAttribute("href"));
  }

  function onQueueKey(event) {
    if (event.key === "j") { move(1); event.preventDefault(); }
    else if (event.key === "k") { move(-1); event.preventDefault(); }
    else if (event.key === "o" || (event.key === "Enter" && !event.target.closest("a, button"))) {
      openSelected(); event.preventDefault();
    }
  }

  function onReviewKey(event) {
    if (event.key === "d") {
      var fieldset = document.getElementById("decision-fieldset");
      var first = document.querySelector("#decision-fieldset input[name=decision]:not(:disabled)");
      if (fieldset && !fieldset.disabled && first) {
        first.focus();
        event.preventDefault();
      } else {
        announce(fieldset ? "This review cannot be decided any more." : "Viewers can read reviews but not decide.");
      }
    } else if (event.key === "u") {
      window.location.assign("/console/queue");
      event.preventDefault();
    }
  }

  document.addEventListener("keydown", function (event) {
    if (event.defaultPrevented || event.altKey || event.ctrlKey || event.metaKey || typing(event)) return;
    var page = document.body.getAttribute("data-page");
    if (page === "queue") onQueueKey(event);
    else if (page === "review") onReviewKey(event);
  });

  // A click on a row selects it too, so j/k continue from there.
  document.addEventListener("focusin", function (event) {
    var row = event.target.closest && event.target.closest("#queue tbody tr.queue-item");
    if (row && !row.classList.contains("selected")) {
      queueRows().forEach(function (r) { r.classList.remove("selected"); });
      row.classList.add("selected");
    }
  });
})();
