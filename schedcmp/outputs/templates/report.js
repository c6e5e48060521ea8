(function () {
  function value(cell) {
    var text = cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent.trim();
    if (text === "") return null;
    var number = Number(text);
    return isNaN(number) ? text : number;
  }
  function compare(a, b) {
    if (typeof a === "number" && typeof b === "number") return a - b;
    return String(a).localeCompare(String(b), undefined, {numeric: true});
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var headers = table.querySelectorAll("thead th");
    headers.forEach(function (th, column) {
      th.addEventListener("click", function () {
        var ascending = th.getAttribute("aria-sort") !== "ascending";
        headers.forEach(function (other) { other.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (r1, r2) {
          var a = value(r1.cells[column]), b = value(r2.cells[column]);
          if (a === null || b === null) return (a === null) - (b === null);
          return ascending ? compare(a, b) : compare(b, a);
        });
        rows.forEach(function (row) { body.appendChild(row); });
      });
    });
  });
  var zoom = document.getElementById("zoom"), big = zoom.querySelector("img"), text = zoom.querySelector("p");
  document.querySelectorAll("img.cell, img.zoomable").forEach(function (img) {
    img.addEventListener("click", function () {
      big.src = img.src;
      big.className = img.classList.contains("pixel") ? "pixel" : "";
      var caption = img.closest("figure").querySelector("figcaption");
      text.textContent = caption ? caption.innerText : img.alt;
      zoom.classList.add("open");
    });
  });
  function close() { zoom.classList.remove("open"); big.removeAttribute("src"); }
  zoom.addEventListener("click", close);
  document.addEventListener("keydown", function (event) { if (event.key === "Escape") close(); });
  document.body.dataset.ready = "1";
})();
