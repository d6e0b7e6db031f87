// linkd embed script: opens a Link session URL in an overlay iframe (or a
// popup) and reports the result through callbacks.
//
//   <script src="https://linkd.example.com/link/embed.js"></script>
//   const handle = Linkd.open({
//     url,                     // from InitLinkSession / POST /v2/link/init
//     mode: 'iframe',          // or 'popup'
//     onSuccess({ connectionId, clientReferenceId }) {},
//     onExit({ status, step, errorCode, clientReferenceId }) {},
//       // status: 'cancelled' | 'error' | 'closed' (the end user closed the
//       // popup, or the overlay with its close button or Escape)
//     onEvent({ step }) {},    // each step the end user reaches
//   });
//   handle.close();            // asks the page to cancel, then closes it
//
// Messages are accepted only from the linkd origin of `url` and from the
// window this script opened; the page posts only to the app's registered
// origin (the origin of the session's redirect URL).
//
// The overlay is a modal dialog: the rest of the host page is inert while
// it is open (focus stays in Link), Escape or its close button end it with
// onExit `closed` (the flow is cancelled at its step), and focus returns to
// where it was.
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
    var closeButton = null;
    var opener = document.activeElement;
    var madeInert = [];
    var lastStep = null;
    var closing = null;

    if (options.mode === 'popup') {
      popup = window.open(url.href, 'linkd-link', 'popup,width=420,height=720');
      if (!popup) throw new Error('Linkd.open: the popup was blocked');
      watcher = setInterval(function () {
        if (popup.closed) finish('onExit', { status: 'closed', step: null, errorCode: null });
      }, 500);
    } else {
      overlay = document.createElement('div');
      overlay.setAttribute('data-linkd-overlay', '');
      overlay.setAttribute('role', 'dialog');
      overlay.setAttribute('aria-modal', 'true');
      overlay.setAttribute('aria-label', 'Link your account');
      overlay.style.cssText = 'position:fixed;inset:0;z-index:2147483647;background:rgba(0,0,0,.45);' +
        'display:flex;align-items:center;justify-content:center;';
      var box = document.createElement('div');
      box.style.cssText = 'position:relative;width:100%;max-width:420px;height:100%;max-height:720px;';
      frame = document.createElement('iframe');
      frame.src = url.href;
      frame.title = 'Link your account';
      frame.setAttribute('referrerpolicy', 'no-referrer');
      frame.style.cssText = 'border:0;width:100%;height:100%;background:#fff;border-radius:12px;display:block;';
      closeButton = document.createElement('button');
      closeButton.type = 'button';
      closeButton.setAttribute('data-linkd-close', '');
      closeButton.setAttribute('aria-label', 'Close');
      closeButton.textContent = '\u00d7';
      closeButton.style.cssText = 'position:absolute;top:8px;right:8px;width:44px;height:44px;border:0;' +
        'border-radius:22px;background:rgba(0,0,0,.06);color:#1b1f24;font:24px/44px system-ui,sans-serif;cursor:pointer;';
      closeButton.addEventListener('click', function () { requestClose(); });
      box.appendChild(frame);
      box.appendChild(closeButton);
      overlay.appendChild(box);
      document.body.appendChild(overlay);
      // Modal: everything else leaves the tab order and the accessibility tree.
      Array.prototype.forEach.call(document.body.children, function (child) {
        if (child !== overlay && !child.hasAttribute('inert')) {
          child.setAttribute('inert', '');
          madeInert.push(child);
        }
      });
      document.addEventListener('keydown', onKey, true);
      frame.focus();
    }

    function onKey(event) {
      if (event.key === 'Escape') {
        event.preventDefault();
        requestClose();
      }
    }

    // The end user closes the overlay: the page cancels the flow at its step
    // (its answer, or a second at most, ends the dialog as `closed`).
    function requestClose() {
      if (closed || closing) return;
      var page = target();
      if (page) page.postMessage({ source: 'linkd-host', type: 'close' }, linkdOrigin);
      if (overlay) overlay.style.display = 'none';
      restoreFocus();
      closing = setTimeout(function () {
        finish('onExit', { status: 'closed', step: lastStep, errorCode: null, clientReferenceId: null });
      }, 1000);
    }

    function restoreFocus() {
      madeInert.forEach(function (child) { child.removeAttribute('inert'); });
      madeInert = [];
      if (opener && opener.isConnected && typeof opener.focus === 'function') opener.focus();
    }

    function target() {
      return popup || (frame && frame.contentWindow);
    }

    function teardown() {
      closed = true;
      window.removeEventListener('message', onMessage);
      document.removeEventListener('keydown', onKey, true);
      if (watcher) clearInterval(watcher);
      if (closing) clearTimeout(closing);
      if (overlay && overlay.parentNode) overlay.parentNode.removeChild(overlay);
      if (overlay) restoreFocus();
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
        // Once closing, the step the end user closed at stays the one
        // reported (the cancel that follows moves the page to `done`).
        if (closing) return;
        lastStep = data.event && data.event.step;
        if (typeof options.onEvent === 'function') options.onEvent(data.event);
      } else if (data.type === 'escape') {
        requestClose();
      } else if (closing && data.type === 'exit') {
        finish('onExit', { status: 'closed', step: data.step || lastStep, errorCode: null, clientReferenceId: data.clientReferenceId || null });
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
