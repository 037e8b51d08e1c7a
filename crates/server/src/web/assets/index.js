// The list of live paths: polls `GET /` with `Accept: application/json` every second
// and redraws the table (a path appears within ~1 s of becoming ready and leaves within
// ~1 s of ending). Same-origin requests only; the browser resends the credentials it was
// asked for when the page loaded.
(function () {
  'use strict';
  var tbody = document.querySelector('#paths tbody');
  var empty = document.getElementById('empty');
  var status = document.getElementById('status');
  var POLL_MS = 1000;
  var last = '';

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function urlRow(kind, url) {
    var row = el('div', 'url');
    row.appendChild(el('span', 'kind', kind));
    row.appendChild(el('code', null, url));
    var b = el('button', 'copy', 'copy');
    b.type = 'button';
    b.addEventListener('click', function () {
      if (navigator.clipboard) {
        navigator.clipboard.writeText(url).then(function () { b.textContent = 'copied'; },
          function () { b.textContent = 'copy failed'; });
      }
    });
    row.appendChild(b);
    return row;
  }

  function render(list) {
    var key = JSON.stringify(list.paths);
    if (key === last) return;
    last = key;
    var origin = location.origin;
    var host = location.hostname.indexOf(':') >= 0 ? '[' + location.hostname + ']' : location.hostname;
    tbody.textContent = '';
    list.paths.forEach(function (p) {
      var tr = el('tr');
      tr.dataset.path = p.name;
      var name = el('td');
      var a = el('a', null, p.name);
      a.href = p.page;
      name.appendChild(a);
      tr.appendChild(name);
      var codecs = el('td', 'codecs', p.tracks.map(function (t) { return t.codec; }).join(', '));
      // What HLS / WebRTC cannot carry of the path, and why (the server's delivery notes).
      (p.delivery || []).forEach(function (d) {
        if (d.playable && d.notes.length === 0) return;
        var note = el('div', d.playable ? 'note' : 'note unplayable', d.summary);
        note.dataset.protocol = d.protocol;
        codecs.appendChild(note);
      });
      tr.appendChild(codecs);
      tr.appendChild(el('td', 'readers', String(p.readers)));
      var urls = el('td');
      urls.appendChild(urlRow('RTSP', 'rtsp://' + host + ':' + list.rtsp_port + '/' + p.page.slice(1, -1)));
      urls.appendChild(urlRow('WHEP', origin + p.whep));
      urls.appendChild(urlRow('HLS', origin + p.hls));
      tr.appendChild(urls);
      tbody.appendChild(tr);
    });
    empty.hidden = list.paths.length > 0;
  }

  function poll() {
    fetch('/', { headers: { Accept: 'application/json' }, cache: 'no-store', credentials: 'same-origin' })
      .then(function (res) {
        if (!res.ok) throw new Error('HTTP ' + res.status);
        return res.json();
      })
      .then(function (list) {
        render(list);
        status.textContent = list.paths.length + ' live, updated ' + new Date().toLocaleTimeString();
      })
      .catch(function (e) { status.textContent = 'cannot refresh: ' + e.message; })
      .then(function () { setTimeout(poll, POLL_MS); });
  }
  poll();
})();
