// linkd embed script: opens a Link session URL in an overlay iframe (or a
// popup) and reports the result through callbacks.
//
//   <script src="https://linkd.example.com/link/embed.js"></script>
//   const handle = Linkd.open({
//     url,                     // from InitLinkSession / POST /v2/link/init
//     mode: 'iframe',          // or 'popup'
//     onSuccess({ connectionId, clientReferenceId }) {},
//     onExit({ status, step, errorCode, clientReferenceId }) {},
//       // status: 'cancelled' | 'error' | 'closed' (popup closed by the user)
//     onEvent({ step }) {},    // each step the end user reaches
//   });
//   handle.close();            // asks the page to cancel, then closes it
//
// Messages are accepted only from the linkd origin of `url` and from the
// window this script opened; the page posts only to the app's registered
// origin (the origin of the session's redirect URL).
(function () {
  'use strict';

  function open(options) {
    if (!options || !options.url) throw new Error('Linkd.open: url is required');
    var url = new URL(options.url, window.location.href);
    var linkdOrigin = url.origin;
    var popup = null;
    var overlay = null;
    var frame = null;
    var closed = false;
    var watcher = null;

    if (options.mode === 'popup') {
      popup = window.open(url.href, 'linkd-link', 'popup,width=420,height=720');
      if (!popup) throw new Error('Linkd.open: the popup was blocked');
      watcher = setInterval(function () {
        if (popup.closed) finish('onExit', { status: 'closed', step: null, errorCode: null });
      }, 500);
    } else {
      overlay = document.createElement('div');
      overlay.setAttribute('data-linkd-overlay', '');
      overlay.style.cssText = 'position:fixed;inset:0;z-index:2147483647;background:rgba(0,0,0,.45);' +
        'display:flex;align-items:center;justify-content:center;';
      frame = document.createElement('iframe');
      frame.src = url.href;
      frame.title = 'Link your account';
      frame.setAttribute('referrerpolicy', 'no-referrer');
      frame.style.cssText = 'border:0;width:100%;max-width:420px;height:100%;max-height:720px;background:#fff;border-radius:12px;';
      overlay.appendChild(frame);
      document.body.appendChild(overlay);
    }

    function target() {
      return popup || (frame && frame.contentWindow);
    }

    function teardown() {
      closed = true;
      window.removeEventListener('message', onMessage);
      if (watcher) clearInterval(watcher);
      if (overlay && overlay.parentNode) overlay.parentNode.removeChild(overlay);
      if (popup && !popup.closed) popup.close();
    }

    function finish(callback, payload) {
      if (closed) return;
      teardown();
      if (typeof options[callback] === 'function') options[callback](payload);
    }

    function onMessage(event) {
      if (event.origin !== linkdOrigin || event.source !== target()) return;
      var data = event.data;
      if (!data || data.source !== 'linkd') return;
      if (data.type === 'event') {
        if (typeof options.onEvent === 'function') options.onEvent(data.event);
      } else if (data.type === 'success') {
        finish('onSuccess', { connectionId: data.connectionId, linkId: data.linkId || null, clientReferenceId: data.clientReferenceId || null });
      } else if (data.type === 'exit') {
        finish('onExit', { status: data.status, step: data.step || null, errorCode: data.errorCode || null, clientReferenceId: data.clientReferenceId || null });
      }
    }

    window.addEventListener('message', onMessage);

    return {
      close: function () {
        var page = target();
        if (!closed && page) page.postMessage({ source: 'linkd-host', type: 'close' }, linkdOrigin);
      },
    };
  }

  window.Linkd = { open: open };
})();
