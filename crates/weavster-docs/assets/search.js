// Filters the index's rows by every word typed (flow and connector names,
// types, fields, expressions). No network: the text is in the page.
(function () {
  var q = document.getElementById("q");
  if (!q) return;
  var rows = Array.prototype.slice.call(document.querySelectorAll("tr.item"));
  var count = document.getElementById("count");
  function filter() {
    var words = q.value.toLowerCase().split(/\s+/).filter(Boolean);
    var shown = 0;
    rows.forEach(function (r) {
      var text = (r.getAttribute("data-search") || "").toLowerCase();
      var hit = words.every(function (w) { return text.indexOf(w) >= 0; });
      r.hidden = !hit;
      if (hit) shown++;
    });
    count.textContent = words.length ? shown + " of " + rows.length + " match" : "";
  }
  q.addEventListener("input", filter);
  var m = /[?&]q=([^&]*)/.exec(location.search);
  if (m) { q.value = decodeURIComponent(m[1].replace(/\+/g, " ")); filter(); }
})();
