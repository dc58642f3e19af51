/* Loops pages: copy buttons, formatted/raw toggles, editor line jumps. No dependencies. */
(function () {
  "use strict";

  function copyText(text, button) {
    var done = function () {
      var label = button.textContent;
      button.textContent = "Copied";
      button.classList.add("copied");
      setTimeout(function () { button.textContent = label; button.classList.remove("copied"); }, 1500);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () { fallback(text); done(); });
    } else {
      fallback(text);
      done();
    }
  }

  function fallback(text) {
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    try { document.execCommand("copy"); } catch (e) { /* nothing else to try */ }
    document.body.removeChild(area);
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy]");
    if (button) {
      var source = document.querySelector(button.getAttribute("data-copy"));
      if (source) copyText(source.textContent.trim(), button);
      return;
    }
    button = event.target.closest("[data-copy-text]");
    if (button) {
      copyText(button.getAttribute("data-copy-text"), button);
      return;
    }
    button = event.target.closest("[data-copy-value]");
    if (button) {
      // The whole value as JSON, indented as in Formatted or compact as in Raw.
      var pane = button.closest("[data-value-box]").querySelector("[data-view-pane]:not([hidden])");
      fetch(button.getAttribute("data-copy-url") + "&view=" + pane.getAttribute("data-view-pane"),
            { credentials: "same-origin" })
        .then(function (r) { return r.text(); })
        .then(function (text) { copyText(text, button); });
      return;
    }
    button = event.target.closest("[data-view]");
    if (button && button.closest("[data-value-box]")) {
      var container = button.closest("[data-value-box]");
      var wanted = button.getAttribute("data-view");
      container.querySelectorAll("[data-view]").forEach(function (b) {
        var on = b.getAttribute("data-view") === wanted;
        b.classList.toggle("on", on);
        b.setAttribute("aria-pressed", on ? "true" : "false");
      });
      container.querySelectorAll("[data-view-pane]").forEach(function (p) {
        p.hidden = p.getAttribute("data-view-pane") !== wanted;
      });
    }
  });

  function aceEditor() {
    var widget = document.querySelector(".django-ace-widget");
    return widget && widget.editor;
  }

  function markEditor(root) {
    var editor = aceEditor();
    if (!editor) return;
    var failing = (root || document).querySelector("[data-error-line]");
    if (failing) {
      var line = parseInt(failing.getAttribute("data-error-line"), 10);
      editor.getSession().setAnnotations([{
        row: line - 1, column: 0, type: "error", text: failing.getAttribute("data-error-message") || "Error"
      }]);
      editor.gotoLine(line, 0, true);
      editor.focus();
      return;
    }
    var goto = document.querySelector("[data-goto-line]");
    if (goto && !root) {
      var target = parseInt(goto.getAttribute("data-goto-line"), 10);
      editor.gotoLine(target, 0, true);
      editor.scrollToLine(target, true, true, function () {});
      editor.focus();
    }
  }

  // django-ace builds its editors on window "load"; this listener is added later, so runs after.
  window.addEventListener("load", function () {
    markEditor(null);
    var editor = aceEditor();
    if (editor) {
      editor.getSession().on("change", function () { editor.getSession().clearAnnotations(); });
    }
  });

  // A secret shown once (a new token, an invitation link) is the answer to a POST: make this
  // history entry a plain GET, so that reloading shows the page without it instead of posting again.
  if (document.querySelector("[data-shown-once]") && window.history.replaceState) {
    window.history.replaceState(null, "", window.location.href);
  }

  // A slug field marked data-slug-from follows that field (a new loop's name) until it is
  // typed into by hand.
  document.querySelectorAll("[data-slug-from]").forEach(function (slug) {
    var source = document.getElementById(slug.dataset.slugFrom);
    if (!source) return;
    var max = parseInt(slug.getAttribute("maxlength") || "64", 10);
    slug.addEventListener("input", function () { slug.dataset.typed = slug.value ? "1" : ""; });
    source.addEventListener("input", function () {
      if (slug.dataset.typed) return;
      slug.value = source.value.normalize("NFKD").replace(/[\u0300-\u036f]/g, "").toLowerCase()
        .replace(/[^a-z0-9]+/g, "-").replace(/^-+|-+$/g, "").slice(0, max).replace(/-+$/, "");
    });
  });

  // A select marked data-autosubmit submits its form on change (no inline handlers under the CSP).
  document.addEventListener("change", function (event) {
    var field = event.target.closest("[data-autosubmit]");
    if (field && field.form) field.form.requestSubmit();
  });

  // Live updates morph the page in place (htmx's morph extension, idiomorph). What the reader
  // did stays as they left it: sections opened or closed, a value box whose value has not
  // changed (its Formatted/Raw choice, chunks loaded, selection), and text typed into a field.
  if (window.Idiomorph) {
    var callbacks = window.Idiomorph.defaults.callbacks;
    callbacks.beforeAttributeUpdated = function (name, element) {
      return !(name === "open" && element.tagName === "DETAILS");
    };
    callbacks.beforeNodeMorphed = function (oldNode, newNode) {
      if (oldNode.nodeType !== 1 || newNode.nodeType !== 1) return true;
      if (oldNode.hasAttribute("data-value-box")) {
        return oldNode.getAttribute("data-value-key") !== newNode.getAttribute("data-value-key");
      }
      if (oldNode.tagName === "INPUT" || oldNode.tagName === "TEXTAREA") {
        return oldNode.value === oldNode.defaultValue;
      }
      return true;
    };
  }

  // A duration in flight (data-tick-from: when it started) counts on by itself each second,
  // in the words the server uses (runs/views.py fmt_ms).
  function duration(ms) {
    if (ms < 1000) return Math.max(ms, 0) + " ms";
    if (ms < 60000) return (ms / 1000).toFixed(1) + " s";
    var minutes = Math.floor(ms / 60000), seconds = Math.floor(ms / 1000) % 60;
    if (minutes < 60) return minutes + " min " + seconds + " s";
    return Math.floor(minutes / 60) + " h " + (minutes % 60) + " min";
  }
  setInterval(function () {
    document.querySelectorAll("[data-tick-from]").forEach(function (cell) {
      var since = Date.parse(cell.getAttribute("data-tick-from"));
      if (!isNaN(since)) cell.textContent = duration(Date.now() - since);
    });
  }, 1000);

  // A row with data-href opens it when clicked anywhere (links inside keep their own target;
  // a click that ends a text selection selects, and Ctrl/Cmd-click opens a new tab).
  document.addEventListener("click", function (event) {
    var row = event.target.closest("tr[data-href]");
    if (!row || event.target.closest("a, button, input, select, label")) return;
    if (String(window.getSelection())) return;
    if (event.ctrlKey || event.metaKey) window.open(row.getAttribute("data-href"), "_blank");
    else window.location.assign(row.getAttribute("data-href"));
  });

  // A form (or its submit button) marked data-confirm asks before it does something that cannot be undone.
  document.addEventListener("submit", function (event) {
    var submitter = event.submitter;
    var question = (submitter && submitter.getAttribute("data-confirm")) ||
      event.target.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      event.preventDefault();
      event.stopImmediatePropagation();
    }
  }, true);

  // "Save Output to Library" shows once the whole output is in the page: one of its views has
  // no chunk or page left to load. (The loaded links are swapped out: remember their box.)
  document.addEventListener("htmx:beforeRequest", function (event) {
    var elt = event.detail.elt;
    if (event.detail.xhr && elt.closest) event.detail.xhr.loopsBox = elt.closest("[data-value-box]");
  });
  document.addEventListener("htmx:afterSwap", function (event) {
    var box = event.detail.xhr && event.detail.xhr.loopsBox;
    if (!box) return;
    var panes = Array.prototype.slice.call(box.querySelectorAll("[data-view-pane]"));
    if (!panes.some(function (pane) { return !pane.querySelector(".load-links, li.more"); })) return;
    var form = box.parentElement.querySelector("[data-needs-full]");
    if (form) form.hidden = false;
  });

  document.addEventListener("htmx:afterSwap", function (event) {
    if (event.detail && event.detail.target && event.detail.target.id === "test-result") {
      markEditor(event.detail.target);
    }
  });
})();
