(function () {
  "use strict";
  var input = document.getElementById("filter");
  var shown = document.getElementById("shown");
  var empty = document.getElementById("no-match");
  var cards = Array.prototype.slice.call(document.querySelectorAll(".card"));
  function apply() {
    var needle = input.value.trim().toLowerCase();
    var n = 0;
    for (var i = 0; i < cards.length; i++) {
      var hit = !needle || cards[i].dataset.search.indexOf(needle) !== -1;
      cards[i].hidden = !hit;
      if (hit) n++;
    }
    shown.textContent = n.toLocaleString("en-US") + " shown";
    empty.hidden = n !== 0 || cards.length === 0;
  }
  input.addEventListener("input", apply);
  document.addEventListener("keydown", function (e) {
    if (e.key === "/" && document.activeElement !== input) {
      e.preventDefault();
      input.focus();
    }
  });
  apply();
})();
