// Log viewer: keep the newest line in view while "Follow" is on (the tail itself is htmx).
(function () {
  "use strict";
  function setup() {
    var view = document.getElementById("logs");
    var follow = document.getElementById("logs-follow");
    var toggle = document.getElementById("logs-follow-switch");
    if (!view || !follow) { return; }
    if (document.getElementById("logs-tail") && document.getElementById("logs-tail").hasAttribute("hx-get")) {
      toggle.classList.remove("d-none");
    }
    function toBottom() { if (follow.checked) { view.scrollTop = view.scrollHeight; } }
    toBottom();
    document.body.addEventListener("htmx:afterSettle", function (event) {
      if (view.contains(event.target) || event.target === view) {
        var empty = document.getElementById("logs-empty");
        if (empty && view.querySelectorAll(".log-line").length) { empty.remove(); }
        toBottom();
      }
    });
    // Scrolling up to read pauses following; back at the bottom resumes it.
    view.addEventListener("scroll", function () {
      follow.checked = view.scrollTop + view.clientHeight >= view.scrollHeight - 8;
    });
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", setup);
  } else {
    setup();
  }
})();
