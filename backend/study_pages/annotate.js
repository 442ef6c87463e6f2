// The annotation page of a MotionLab human preference study (plain JS, no build step).
//
// The invitation token is the second path segment (/a/<token>); every request goes to /a/<token>/api/...
// Flow: state -> instructions -> next item -> play both videos (synchronized) -> every video 'ended' -> answer
// buttons unlock -> submit -> next item. Playback events (load, play, pause, progress, seeked, ended) are posted
// in order as they happen; the server refuses an answer whose events do not show a full watch, so the page
// waits for its event queue to drain before submitting.
"use strict";

(function () {
  const token = decodeURIComponent(location.pathname.split("/")[2] || "");
  const api = "/a/" + encodeURIComponent(token) + "/api";
  const $ = (id) => document.getElementById(id);
  const SECTIONS = ["loading", "intro", "item", "done", "error"];

  let study = null;        // public study info (mode, questions, instructions)
  let item = null;         // the current item
  let answers = {};        // question id -> "left" | "tie" | "right" | rating
  let active = 0;          // index of the highlighted question
  let watched = {};        // side -> played to the end
  let started = false;     // the user pressed Play at least once for this item
  let shownAt = 0;         // when the item was shown (ms)
  let eventChain = Promise.resolve();
  let lastProgress = {};   // side -> last time a progress event was sent (ms)
  let timerHandle = null;
  let busy = false;

  function show(name) {
    for (const s of SECTIONS) $(s).hidden = s !== name;
  }

  function fail(text) {
    $("error-text").textContent = text;
    show("error");
  }

  async function call(method, path, body) {
    const opts = { method, headers: {}, cache: "no-store" };
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    const r = await fetch(api + path, opts);
    let data = null;
    try { data = await r.json(); } catch (e) { data = null; }
    if (!r.ok) {
      const err = new Error((data && data.error && data.error.message) || ("HTTP " + r.status));
      err.status = r.status;
      err.code = data && data.error && data.error.code;
      throw err;
    }
    return data;
  }

  // --- events ----------------------------------------------------------------------------------------------------

  function postEvent(side, event, video) {
    if (!item) return;
    const assignment = item.assignment_id;
    const ev = { event, side, t: video ? video.currentTime : null, client_ms: Date.now() };
    if (video && isFinite(video.duration)) ev.duration = video.duration;
    if (video) ev.paused = video.paused;
    // one request at a time, in order: an 'ended' event is stored before the answer that depends on it
    eventChain = eventChain.then(() => call("POST", "/assignments/" + assignment + "/events", { events: [ev] })
      .catch((e) => { if (e.code === "assignment_expired") message("This item was released; loading the next one."); }));
    return eventChain;
  }

  function videos() {
    return item.sides.map((s) => [s, $("video-" + s)]);
  }

  function bindVideo(side, v) {
    v.onloadedmetadata = () => postEvent(side, "load", v);
    v.onplay = () => postEvent(side, "play", v);
    v.onpause = () => { if (!v.ended) postEvent(side, "pause", v); };
    v.onseeked = () => postEvent(side, "seeked", v);
    v.ontimeupdate = () => {
      const now = Date.now();
      if (!lastProgress[side] || now - lastProgress[side] > 1000) {
        lastProgress[side] = now;
        if (!v.paused && !v.ended) postEvent(side, "progress", v);
      }
      sync(side, v);
    };
    v.onended = () => {
      postEvent(side, "ended", v);
      watched[side] = true;
      updateWatch();
    };
    v.onerror = () => message("A video could not be loaded; try reloading the page.");
  }

  // keep the two videos within 0.15 s of each other while both play
  function sync(side, v) {
    if (side !== "left" || item.sides.length < 2) return;
    const other = $("video-right");
    if (v.paused || other.paused || v.ended || other.ended) return;
    if (Math.abs(other.currentTime - v.currentTime) > 0.15 && v.currentTime < other.duration - 0.2) {
      other.currentTime = v.currentTime;
    }
  }

  // --- rendering -------------------------------------------------------------------------------------------------

  function renderProgress(p) {
    const target = Math.max(p.target || 0, p.done);
    $("progress").max = Math.max(1, target);
    $("progress").value = p.done;
    $("progress-text").textContent = target ? p.done + " / " + target + " done" : p.done + " done";
  }

  function message(text, ok) {
    $("message").textContent = text || "";
    $("message").className = "message" + (ok ? " ok" : "");
  }

  function choiceLabels() {
    if (study.mode === "pairwise") return [["left", "◀ Left"], ["tie", "Tie"], ["right", "Right ▶"]];
    const out = [];
    for (let r = study.likert_scale[0]; r <= study.likert_scale[1]; r++) out.push([r, String(r)]);
    return out;
  }

  function renderQuestions() {
    const box = $("questions");
    box.textContent = "";
    const labels = choiceLabels();
    study.questions.forEach((q, qi) => {
      const fs = document.createElement("fieldset");
      fs.className = "question";
      fs.dataset.question = q.id;
      const p = document.createElement("p");
      p.className = "qtext";
      const lab = document.createElement("span");
      lab.className = "qlabel";
      lab.textContent = q.label + ": ";
      p.appendChild(lab);
      p.appendChild(document.createTextNode(q.text));
      fs.appendChild(p);
      const row = document.createElement("div");
      row.className = "choices";
      row.style.setProperty("--n", String(labels.length));
      for (const [value, text] of labels) {
        const b = document.createElement("button");
        b.type = "button";
        b.className = "choice";
        b.dataset.value = String(value);
        b.textContent = text;
        b.setAttribute("aria-pressed", "false");
        b.disabled = true;
        b.addEventListener("click", () => choose(qi, value));
        row.appendChild(b);
      }
      fs.appendChild(row);
      fs.addEventListener("click", () => setActive(qi));
      box.appendChild(fs);
    });
    $("keys-answer").textContent = study.mode === "pairwise" ? "1/2/3 = left/tie/right" : "1-5 = rating";
    setActive(0);
  }

  function setActive(i) {
    active = Math.max(0, Math.min(study.questions.length - 1, i));
    document.querySelectorAll(".question").forEach((el, k) => el.classList.toggle("active", k === active));
  }

  function allWatched() {
    return item && item.sides.every((s) => watched[s]);
  }

  function updateWatch() {
    for (const s of ["left", "right"]) {
      const el = $("watch-" + s);
      el.textContent = watched[s] ? "watched ✓" : "not watched";
      el.classList.toggle("done", !!watched[s]);
    }
    const ready = allWatched();
    document.querySelectorAll("button.choice").forEach((b) => { b.disabled = !ready; });
    $("watch-hint").textContent = ready ? "Videos watched: answer every question, then submit."
      : "Watch the videos to the end to unlock the answers.";
    $("watch-hint").classList.toggle("ready", ready);
    updateSubmit();
  }

  function updateSubmit() {
    const complete = study && study.questions.every((q) => answers[q.id] !== undefined);
    $("submit").disabled = busy || !allWatched() || !complete;
  }

  function choose(qi, value) {
    if (!allWatched()) return;
    const q = study.questions[qi];
    answers[q.id] = value;
    const fs = document.querySelectorAll(".question")[qi];
    fs.querySelectorAll("button.choice").forEach((b) => b.setAttribute("aria-pressed",
      String(b.dataset.value === String(value))));
    if (qi === active && qi < study.questions.length - 1) setActive(qi + 1);
    updateSubmit();
  }

  function renderItem(state) {
    study = state.study;
    renderProgress(state.progress);
    if (!state.item) {
      if (study.status === "closed") $("done-text").textContent = "This study is closed. Thank you for your help.";
      show("done");
      return;
    }
    item = state.item;
    answers = {};
    watched = {};
    lastProgress = {};
    started = false;
    busy = false;
    shownAt = Date.now();
    for (const s of item.sides) watched[s] = !!(item.watched && item.watched[s]);
    $("prompt").textContent = item.prompt || "";
    const single = item.sides.length === 1;
    $("videos").classList.toggle("single", single);
    document.querySelector('.side[data-side="right"]').hidden = single;
    document.querySelector('.side[data-side="left"] .side-name').textContent = single ? "Video" : "Left";
    for (const [side, v] of videos()) {
      bindVideo(side, v);
      v.src = item.videos[side];
      v.load();
    }
    if (single) { const r = $("video-right"); r.removeAttribute("src"); r.load(); }
    renderQuestions();
    updateWatch();
    message("");
    $("play").textContent = "▶ Play";
    startTimer(item.time_left_s);
    show("item");
    window.scrollTo(0, 0);
  }

  function startTimer(seconds) {
    if (timerHandle) clearInterval(timerHandle);
    const el = $("timer");
    if (seconds === null || seconds === undefined) { el.hidden = true; return; }
    const end = Date.now() + seconds * 1000;
    el.hidden = false;
    const tick = () => {
      const left = Math.max(0, Math.round((end - Date.now()) / 1000));
      el.textContent = "Time left: " + Math.floor(left / 60) + ":" + String(left % 60).padStart(2, "0");
      if (left <= 0) clearInterval(timerHandle);
    };
    tick();
    timerHandle = setInterval(tick, 1000);
  }

  // --- playback controls (both videos together) -------------------------------------------------------------------

  function anyPlaying() {
    return videos().some(([, v]) => !v.paused && !v.ended);
  }

  async function playAll() {
    const vs = videos().map(([, v]) => v);
    if (vs.every((v) => v.ended)) vs.forEach((v) => { v.currentTime = 0; });
    started = true;
    $("play").textContent = "❚❚ Pause";
    try {
      await Promise.all(vs.filter((v) => !v.ended).map((v) => v.play()));
    } catch (e) {
      message("Playback was blocked by the browser: press Play again.");
    }
  }

  function pauseAll() {
    videos().forEach(([, v]) => v.pause());
    $("play").textContent = "▶ Play";
  }

  function togglePlay() {
    if (!item) return;
    if (anyPlaying()) pauseAll(); else playAll();
  }

  function restart() {
    if (!item) return;
    videos().forEach(([, v]) => { v.pause(); v.currentTime = 0; });
    playAll();
  }

  // --- flow ------------------------------------------------------------------------------------------------------

  async function next() {
    try {
      renderItem(await call("POST", "/next"));
    } catch (e) {
      handleError(e);
    }
  }

  async function submit() {
    if ($("submit").disabled || !item) return;
    busy = true;
    updateSubmit();
    message("Saving…", true);
    try {
      await eventChain;  // the 'ended' events must reach the server first
      await call("POST", "/assignments/" + item.assignment_id + "/answer",
        { answers, duration_ms: Date.now() - shownAt });
      message("Saved.", true);
      pauseAll();
      item = null;
      await next();
    } catch (e) {
      busy = false;
      if (["duplicate_answer", "assignment_expired", "time_limit_exceeded", "not_assigned"].includes(e.code)) {
        message(e.message + " Loading the next item…");
        setTimeout(next, 1200);
      } else if (e.code === "playback_incomplete") {
        watched = {};
        updateWatch();
        message(e.message);
      } else {
        message(e.message);
      }
      updateSubmit();
    }
  }

  function handleError(e) {
    if (e.code === "study_not_open") fail("This study has not opened yet. Please come back later.");
    else if (e.code === "study_closed") { $("done-text").textContent = "This study is closed. Thank you!"; show("done"); }
    else if (e.status === 401 || e.status === 403) fail(e.message);
    else fail("Something went wrong: " + e.message);
  }

  document.addEventListener("keydown", (ev) => {
    if (ev.target && (ev.target.tagName === "INPUT" || ev.target.tagName === "TEXTAREA")) return;
    if ($("item").hidden) {
      if (ev.key === "Enter" && !$("intro").hidden) { ev.preventDefault(); $("start").click(); }
      return;
    }
    const key = ev.key;
    if (key === " " || key === "k") { ev.preventDefault(); togglePlay(); return; }
    if (key === "r" || key === "R") { ev.preventDefault(); restart(); return; }
    if (key === "ArrowUp") { ev.preventDefault(); setActive(active - 1); return; }
    if (key === "ArrowDown") { ev.preventDefault(); setActive(active + 1); return; }
    if (key === "Enter") { ev.preventDefault(); submit(); return; }
    if (!study || !allWatched()) return;
    if (study.mode === "pairwise") {
      const map = { "1": "left", "2": "tie", "3": "right", "ArrowLeft": "left", "ArrowRight": "right" };
      if (map[key]) { ev.preventDefault(); choose(active, map[key]); }
    } else if (/^[1-9]$/.test(key)) {
      const r = Number(key);
      if (r >= study.likert_scale[0] && r <= study.likert_scale[1]) { ev.preventDefault(); choose(active, r); }
    }
  });

  $("play").addEventListener("click", togglePlay);
  $("restart").addEventListener("click", restart);
  $("submit").addEventListener("click", submit);
  $("start").addEventListener("click", next);

  async function init() {
    try {
      const state = await call("GET", "/state");
      study = state.study;
      renderProgress(state.progress);
      if (study.status === "closed") { $("done-text").textContent = "This study is closed. Thank you!"; show("done"); return; }
      if (study.status !== "open") { fail("This study has not opened yet. Please come back later."); return; }
      if (state.item) { renderItem(state); return; }  // come back where you stopped
      $("instructions").textContent = study.instructions;
      $("start").textContent = state.progress.done ? "Continue" : "Start";
      show("intro");
    } catch (e) {
      handleError(e);
    }
  }

  init();
})();
