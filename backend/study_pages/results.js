// Results page of a MotionLab human preference study (plain JS). Reads /v1/studies/<id>/... with an API key.
"use strict";

(function () {
  const studyId = location.pathname.split("/")[2] || "";
  const base = "/v1/studies/" + encodeURIComponent(studyId);
  const $ = (id) => document.getElementById(id);
  const KEY = "motionlab_api_key";
  const urls = [];

  function fmt(x, d) {
    if (x === null || x === undefined) return "–";
    if (typeof x !== "number") return String(x);
    return x.toFixed(d === undefined ? 2 : d);
  }
  const pct = (x) => (x === null || x === undefined ? "–" : (100 * x).toFixed(0) + "%");
  const ci = (iv) => (iv ? "[" + pct(iv[0]) + ", " + pct(iv[1]) + "]" : "");

  async function get(path, as) {
    const r = await fetch(base + path, { headers: { Authorization: "Bearer " + $("key").value.trim() },
                                         cache: "no-store" });
    if (!r.ok) {
      let msg = "HTTP " + r.status;
      try { msg = (await r.json()).error.message; } catch (e) { /* not JSON */ }
      const err = new Error(msg);
      err.status = r.status;
      throw err;
    }
    return as === "blob" ? r.blob() : as === "text" ? r.text() : r.json();
  }

  function table(headers, rows) {
    const t = document.createElement("table");
    const tr = document.createElement("tr");
    for (const h of headers) { const th = document.createElement("th"); th.textContent = h; tr.appendChild(th); }
    t.appendChild(tr);
    for (const row of rows) {
      const r = document.createElement("tr");
      for (const cell of row) {
        const td = document.createElement("td");
        td.textContent = cell;
        if (/^[-\d.[%–]/.test(String(cell))) td.className = "num";
        r.appendChild(td);
      }
      t.appendChild(r);
    }
    return t;
  }

  function section(id, title, node) {
    const s = $(id);
    s.textContent = "";
    if (!node) return;
    const h = document.createElement("h2");
    h.textContent = title;
    s.appendChild(h);
    s.appendChild(node);
  }

  function render(study, res) {
    $("title").textContent = "Results: " + study.name;
    $("status").textContent = study.status + " · " + study.counts.responses + " answers · " +
      study.counts.annotators + " annotators";
    const labels = (res.study && res.study.question_labels) || {};
    const qn = (q) => labels[q] || q;
    const s = document.createElement("p");
    s.textContent = res.n_responses + " answers from " + res.n_annotators + " annotators on " + res.n_items +
      " items (" + res.n_used + " used; " + (res.excluded_annotators.length) + " annotators excluded). " +
      "Intervals: 95% Wilson; p: two-sided sign test on non-tie answers.";
    section("summary", "Summary", s);
    if (res.pairwise.length) {
      section("pairwise", "Pairwise preferences", table(
        ["question", "A vs B", "n", "A wins", "tie", "B wins", "sign test p", "Fleiss κ", "Krippendorff α"],
        res.pairwise.map((r) => [qn(r.question), r.model_a + " vs " + r.model_b, r.n,
          pct(r.rates.win) + " " + ci(r.intervals.win), pct(r.rates.tie) + " " + ci(r.intervals.tie),
          pct(r.rates.lose) + " " + ci(r.intervals.lose), fmt(r.sign_test_p, 4), fmt(r.fleiss_kappa),
          fmt(r.krippendorff_alpha)])));
    } else section("pairwise", "", null);
    const ranks = Object.entries(res.ranking || {});
    if (ranks.length) {
      const rows = [];
      for (const [q, list] of ranks) for (const r of list) {
        rows.push([qn(q), r.rank + " [" + r.rank_low + "–" + r.rank_high + "]", r.model, fmt(r.strength),
          "[" + fmt(r.low) + ", " + fmt(r.high) + "]", pct(r.prob_best)]);
      }
      section("ranking", "Bradley–Terry ranking (bootstrap 95% intervals)",
        table(["question", "rank", "model", "log-strength", "interval", "P(best)"], rows));
    } else section("ranking", "", null);
    if (res.likert.length) {
      section("likert", "Likert ratings (1–5, mean with 95% t interval)", table(
        ["question", "model", "n", "mean", "interval", "Krippendorff α"],
        res.likert.map((r) => [qn(r.question), r.model, r.n, fmt(r.mean), "[" + fmt(r.ci_low) + ", " +
          fmt(r.ci_high) + "]", fmt(res.likert_agreement[r.question])])));
    } else section("likert", "", null);
    const gold = Object.entries(res.gold || {});
    if (gold.length) {
      section("gold", "Gold / attention checks", table(["annotator", "gold answers", "correct", "accuracy", ""],
        gold.map(([a, g]) => [a, g.n_gold, g.n_correct, pct(g.accuracy), g.flagged ? "flagged" : ""])));
    } else section("gold", "", null);
  }

  function download(id, path, type, name) {
    const a = $(id);
    a.onclick = async (ev) => {
      ev.preventDefault();
      try {
        const blob = await get(path, "blob");
        const url = URL.createObjectURL(new Blob([blob], { type }));
        urls.push(url);
        const link = document.createElement("a");
        link.href = url;
        link.download = name;
        document.body.appendChild(link);
        link.click();
        link.remove();
      } catch (e) { $("message").textContent = e.message; }
    };
  }

  async function load() {
    sessionStorage.setItem(KEY, $("key").value.trim());
    $("message").textContent = "Loading…";
    const q = "?exclude_flagged=" + ($("exclude").checked ? "true" : "false");
    try {
      const [study, res] = await Promise.all([get(""), get("/results" + q)]);
      render(study, res);
      $("message").textContent = "";
      if (res.pairwise.length) {
        const blob = await get("/figure.png" + q, "blob");
        const url = URL.createObjectURL(blob);
        urls.push(url);
        $("figure").src = url;
        $("figure-wrap").hidden = false;
      } else $("figure-wrap").hidden = true;
      $("downloads").hidden = false;
      download("dl-results-csv", "/results.csv" + q, "text/csv", studyId + "-results.csv");
      download("dl-results-json", "/results" + q, "application/json", studyId + "-results.json");
      download("dl-responses-csv", "/responses.csv", "text/csv", studyId + "-responses.csv");
      download("dl-responses-json", "/responses.json", "application/json", studyId + "-responses.json");
      document.body.dataset.loaded = "true";
    } catch (e) {
      $("message").textContent = e.message;
    }
  }

  $("load").addEventListener("click", load);
  $("exclude").addEventListener("change", () => { if ($("key").value) load(); });
  const saved = sessionStorage.getItem(KEY);
  if (saved) { $("key").value = saved; load(); }
})();
