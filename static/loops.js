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
    button = event.target.closest("[data-copy-value]");
    if (button) {
      var box = button.closest("[data-value-box]");
      var pane = box.querySelector("[data-view-pane]:not([hidden])");
      var url = button.getAttribute("data-copy-url");
      if (url) {
        var view = pane.getAttribute("data-view-pane");
        fetch(url + "&view=" + view, { credentials: "same-origin" })
          .then(function (r) { return r.text(); })
          .then(function (text) { copyText(text, button); });
      } else {
        var parts = Array.prototype.map.call(pane.querySelectorAll("pre"), function (pre) { return pre.textContent; });
        copyText(parts.join(pane.querySelector(".items") ? ",\n" : ""), button);
      }
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

  document.addEventListener("htmx:afterSwap", function (event) {
    if (event.detail && event.detail.target && event.detail.target.id === "test-result") {
      markEditor(event.detail.target);
    }
  });
})();
