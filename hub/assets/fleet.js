// The fleet page's only script: it keeps the page current from the hub's event stream (one
// `fleet` event per change; no polling), submits the filter selects on change, and keeps the
// relative times fresh from the local clock.
'use strict';

(function () {
  const main = document.getElementById('fleet');
  const live = document.getElementById('live');
  if (!main || !live) {
    return;
  }

  function ago(ms) {
    const s = Math.floor(ms / 1000);
    if (s < 5) return 'just now';
    if (s < 60) return s + ' s ago';
    if (s < 3600) return Math.floor(s / 60) + ' min ago';
    if (s < 86400) return Math.floor(s / 3600) + ' h ago';
    return Math.floor(s / 86400) + ' d ago';
  }

  function refreshTimes(root) {
    const now = Date.now();
    for (const t of root.querySelectorAll('time[data-ms]')) {
      t.textContent = ago(Math.max(0, now - Number(t.dataset.ms)));
    }
  }

  function setLive(state, text) {
    live.dataset.state = state;
    live.textContent = text;
  }

  function shownVersion() {
    const summary = main.querySelector('[data-version]');
    return summary ? summary.dataset.version : '';
  }

  let busy = false;
  let again = false;

  async function reload() {
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    try {
      const params = new URLSearchParams(window.location.search);
      params.set('part', 'main');
      const response = await fetch('/fleet?' + params.toString(), {
        credentials: 'same-origin',
        headers: { Accept: 'text/html' },
      });
      if (response.status === 401) {
        window.location.assign('/fleet/login');
        return;
      }
      if (response.ok) {
        main.innerHTML = await response.text();
        refreshTimes(main);
        jumpToTarget();
      } else {
        setLive('stale', 'update failed (' + response.status + ')');
      }
    } catch (err) {
      setLive('stale', 'update failed');
    } finally {
      busy = false;
      if (again) {
        again = false;
        reload();
      }
    }
  }

  function jumpToTarget() {
    const id = decodeURIComponent(window.location.hash.slice(1));
    const target = id && document.getElementById(id);
    if (target) {
      target.classList.add('target');
    }
  }

  const source = new EventSource('/v1/fleet/events');
  source.addEventListener('open', function () {
    setLive('live', 'live');
  });
  source.addEventListener('error', function () {
    setLive('reconnecting', 'reconnecting…');
  });
  source.addEventListener('fleet', function (event) {
    setLive('live', 'live');
    if (event.data !== shownVersion()) {
      reload();
    }
  });

  for (const select of document.querySelectorAll('#filters select')) {
    select.addEventListener('change', function () {
      select.form.submit();
    });
  }

  refreshTimes(document);
  jumpToTarget();
  window.setInterval(function () {
    refreshTimes(document);
  }, 15000);
})();
