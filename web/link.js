// The Link page: walks the end user through a linkd flow using only the flow
// API of this origin (REST /v1/flow…), authenticated by the flow token from
// the URL fragment (Link sessions) or from claiming a link (app clip).
// Hosted: finishes by navigating to the redirect URL. Embedded (iframe or
// popup opened by /link/embed.js): finishes by posting the result to the
// client app's registered origin, and accepts messages only from it.
(() => {
  'use strict';

  const TEXT = {
    en: {
      loading: 'Loading…',
      pick: 'Choose your provider',
      search: 'Search',
      searchPlaceholder: 'Provider name',
      noMatch: (query) => `No provider matches “${query}”.`,
      sandbox: 'Sandbox',
      categories: { bank: 'Banks', mobile_carrier: 'Mobile carriers', delivery: 'Delivery', creator: 'Creator platforms' },
      pickLead: (app) => `${app} wants to connect to one of your accounts.`,
      login: (name) => `Log in to ${name}`,
      loginLead: 'Your credentials go to the provider only; they are not shared with the app.',
      submit: 'Continue',
      cancel: 'Cancel',
      twoFactor: 'Enter your verification code',
      code: 'Verification code',
      verify: 'Verify',
      consent: (app, name) => `Allow ${app} to access your ${name} account?`,
      consentLead: (app) => `${app} will be able to use this connection until you or the app remove it.`,
      allow: 'Allow',
      scopes: 'It asks for:',
      scope: { accounts: 'Your accounts and balances', transactions: 'Your transactions', statements: 'Your statements', identity: 'Your name and contact details' },
      working: 'Connecting…',
      success: 'Connected. Returning to the app…',
      cancelled: 'Cancelled. Returning to the app…',
      failed: 'Something went wrong. Returning to the app…',
      returning: 'Returning to the app…',
      finished: 'This session has already been used. Start again from the app.',
      expired: 'This session has expired. Start again from the app.',
      invalid: 'This link is not valid. Start again from the app.',
      network: 'Could not reach the server. Check your connection and try again.',
      close: 'You can close this window.',
      continueTo: (name) => `Continue to ${name}`,
      oauthLead: (name) => `You will sign in on ${name}’s own page. Your password is never shared with the app.`,
      oauthWaiting: (name) => `Finish signing in to ${name} in the window that opened.`,
      popupBlocked: 'The sign-in window was blocked. Allow pop-ups for this page and try again.',
      oauthInvalid: 'This sign-in could not be completed. Try again from the start.',
      errors: {
        authorization_failed: 'The provider did not authorize the connection.',
        invalid_credentials: 'The username or password is incorrect.',
        invalid_code: 'That code is incorrect. Check it and try again.',
        account_locked: 'This account is locked at the provider.',
        operation_failed: 'The provider could not complete the request.',
        operation_interrupted: 'The connection to the provider was interrupted. Some changes may have been made; check the account before trying again.',
        session_expired: 'This session has expired. Start again from the app.',
        link_expired: 'This link has expired.',
        provider_unavailable: 'The provider is unavailable. Try again later.',
      },
    },
    fr: {
      loading: 'Chargement…',
      pick: 'Choisissez votre fournisseur',
      search: 'Rechercher',
      searchPlaceholder: 'Nom du fournisseur',
      noMatch: (query) => `Aucun fournisseur ne correspond à « ${query} ».`,
      sandbox: 'Bac à sable',
      categories: { bank: 'Banques', mobile_carrier: 'Opérateurs mobiles', delivery: 'Livraison', creator: 'Plateformes de créateurs' },
      pickLead: (app) => `${app} souhaite se connecter à l’un de vos comptes.`,
      login: (name) => `Connexion à ${name}`,
      loginLead: 'Vos identifiants vont uniquement au fournisseur; ils ne sont pas partagés avec l’application.',
      submit: 'Continuer',
      cancel: 'Annuler',
      twoFactor: 'Saisissez votre code de vérification',
      code: 'Code de vérification',
      verify: 'Vérifier',
      consent: (app, name) => `Autoriser ${app} à accéder à votre compte ${name}?`,
      consentLead: (app) => `${app} pourra utiliser cette connexion jusqu’à ce que vous ou l’application la supprimiez.`,
      allow: 'Autoriser',
      scopes: 'Elle demande :',
      scope: { accounts: 'Vos comptes et soldes', transactions: 'Vos transactions', statements: 'Vos relevés', identity: 'Vos nom et coordonnées' },
      working: 'Connexion en cours…',
      success: 'Compte connecté. Retour à l’application…',
      cancelled: 'Annulé. Retour à l’application…',
      failed: 'Une erreur est survenue. Retour à l’application…',
      returning: 'Retour à l’application…',
      finished: 'Cette session a déjà été utilisée. Recommencez depuis l’application.',
      expired: 'Cette session a expiré. Recommencez depuis l’application.',
      invalid: 'Ce lien n’est pas valide. Recommencez depuis l’application.',
      network: 'Impossible de joindre le serveur. Vérifiez votre connexion et réessayez.',
      close: 'Vous pouvez fermer cette fenêtre.',
      continueTo: (name) => `Continuer vers ${name}`,
      oauthLead: (name) => `Vous vous connecterez sur la page de ${name}. Votre mot de passe n’est jamais partagé avec l’application.`,
      oauthWaiting: (name) => `Terminez la connexion à ${name} dans la fenêtre qui s’est ouverte.`,
      popupBlocked: 'La fenêtre de connexion a été bloquée. Autorisez les fenêtres surgissantes pour cette page et réessayez.',
      oauthInvalid: 'Cette connexion n’a pas pu aboutir. Recommencez depuis le début.',
      errors: {
        authorization_failed: 'Le fournisseur n’a pas autorisé la connexion.',
        invalid_credentials: 'Le nom d’utilisateur ou le mot de passe est incorrect.',
        invalid_code: 'Ce code est incorrect. Vérifiez-le et réessayez.',
        account_locked: 'Ce compte est verrouillé chez le fournisseur.',
        operation_failed: 'Le fournisseur n’a pas pu traiter la demande.',
        operation_interrupted: 'La connexion avec le fournisseur a été interrompue. Des changements ont pu être faits; vérifiez le compte avant de réessayer.',
        session_expired: 'Cette session a expiré. Recommencez depuis l’application.',
        link_expired: 'Ce lien a expiré.',
        provider_unavailable: 'Le fournisseur est indisponible. Réessayez plus tard.',
      },
    },
  };

  const REDIRECT_DELAY_MS = 900;
  // Past this many integrations the picker offers a search box.
  const SEARCH_FROM = 8;
  const CATEGORY_ORDER = ['bank', 'mobile_carrier', 'delivery', 'creator'];
  const POLL_MS = 1000;
  const view = document.getElementById('view');
  const host = window.opener || (window.parent !== window ? window.parent : null);
  let t = TEXT.en;
  let token = null;
  let flow = null;
  let lastStep = null;
  // What the end user typed in the non-secret login fields, to give back
  // after a refused login (never a password).
  let typed = {};

  // ---- building blocks -----------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === 'on') {
        for (const [type, handler] of Object.entries(value)) node.addEventListener(type, handler);
      } else if (value !== false && value != null) {
        node.setAttribute(key, value === true ? '' : value);
      }
    }
    for (const child of children.flat()) {
      if (child != null) node.append(child);
    }
    return node;
  }

  function show(...nodes) {
    // Optional parts are passed as null; replaceChildren would print them.
    view.replaceChildren(...nodes.flat().filter((node) => node != null));
    const heading = view.querySelector('h1');
    const first = view.querySelector('input, .choices button');
    (first || heading)?.focus();
  }

  function message(text, extra) {
    show(el('h1', { tabindex: '-1' }, text), extra || null);
  }

  function setBusy(busy) {
    for (const control of view.querySelectorAll('button, input')) control.disabled = busy;
    view.setAttribute('aria-busy', busy ? 'true' : 'false');
  }

  function errorText(code) {
    return code ? t.errors[code] || t.errors.provider_unavailable : '';
  }

  // ---- talking to linkd ----------------------------------------------------

  class ApiError extends Error {
    constructor(status, body) {
      super(body?.error || `HTTP ${status}`);
      this.status = status;
      this.body = body;
    }
  }

  async function api(path, body) {
    const headers = { Accept: 'application/json' };
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const response = await fetch(path, {
      method: body === undefined ? 'GET' : 'POST',
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'omit',
      cache: 'no-store',
    });
    const data = await response.json().catch(() => null);
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  async function act(path, body) {
    setBusy(true);
    try {
      render(await api(path, body));
    } catch (err) {
      await failed(err);
    }
  }

  async function failed(err) {
    if (!(err instanceof ApiError)) {
      setBusy(false);
      const alert = view.querySelector('.alert');
      if (alert) alert.textContent = t.network;
      else message(t.network);
      return;
    }
    const code = err.body?.code;
    if (err.status === 410 || code === 'SESSION_EXPIRED' || code === 'LINK_EXPIRED') {
      // The flow is finished as expired; its view carries the redirect.
      try {
        render(await api('/v1/flow'));
      } catch {
        message(t.expired);
      }
    } else if (code === 'FLOW_FINISHED') {
      message(t.finished, el('p', { class: 'muted' }, t.close));
    } else if (err.status === 401) {
      message(t.invalid);
    } else if (err.status === 400) {
      setBusy(false);
      const alert = view.querySelector('.alert');
      const issue = err.body?.issues?.[0];
      if (alert) alert.textContent = issue ? `${issue.path}: ${issue.message}` : err.message;
    } else {
      // WRONG_STEP and the like: show where the flow really is.
      try {
        render(await api('/v1/flow'));
      } catch {
        message(t.network);
      }
    }
  }

  // ---- embedding -----------------------------------------------------------

  function post(payload) {
    if (!host || !flow?.clientOrigin) return false;
    host.postMessage({ source: 'linkd', ...payload }, flow.clientOrigin);
    return true;
  }

  // Escape inside an embedded page closes the host's dialog.
  document.addEventListener('keydown', (event) => {
    if (event.key === 'Escape' && flow && flow.step !== 'done') post({ type: 'escape' });
  });

  window.addEventListener('message', (event) => {
    // Only the embedding app, from its registered origin, may talk to us.
    if (!flow?.clientOrigin || event.origin !== flow.clientOrigin || event.source !== host) return;
    const data = event.data;
    if (data?.source === 'linkd-host' && data.type === 'close' && flow.step !== 'done') {
      if (['pre-login', 'authorization', 'login', '2fa'].includes(flow.step)) {
        act('/v1/flow/cancel', { step: flow.step });
      }
    }
  });

  // ---- steps ---------------------------------------------------------------

  function cancelButton() {
    return el('button', { type: 'button', class: 'cancel', on: { click: () => act('/v1/flow/cancel', { step: flow.step }) } }, t.cancel);
  }

  function alertBox(code) {
    return el('p', { class: 'alert', role: 'alert' }, errorText(code));
  }

  // Case- and accent-insensitive, for the picker's search.
  function folded(text) {
    return text.normalize('NFD').replace(/[\u0300-\u036f]/g, '').toLowerCase();
  }

  function renderPreLogin() {
    const choice = (c) => el('li', { 'data-name': folded(c.name) }, el('button', {
      type: 'button',
      'data-integration': c.integrationId,
      on: { click: () => act('/v1/flow/integration', { integrationId: c.integrationId }) },
    }, el('span', {}, c.name), c.sandbox ? el('span', { class: 'badge' }, t.sandbox) : null));
    const categories = CATEGORY_ORDER.filter((k) => flow.integrations.some((c) => c.category === k));
    const others = flow.integrations.filter((c) => !CATEGORY_ORDER.includes(c.category));
    // Grouped under headings when there is more than one kind.
    const groups = categories.length + (others.length ? 1 : 0) > 1
      ? [...categories.map((k) => [t.categories[k], flow.integrations.filter((c) => c.category === k)]), ...(others.length ? [[null, others]] : [])]
      : [[null, flow.integrations]];
    const lists = groups.map(([heading, members]) => el('section', { class: 'group' },
      heading ? el('h2', {}, heading) : null,
      el('ul', { class: 'choices' }, members.map(choice))));
    const none = el('p', { class: 'muted none', role: 'status' });
    const filter = (query) => {
      const wanted = folded(query.trim());
      let shown = 0;
      for (const group of lists) {
        let inGroup = 0;
        for (const item of group.querySelectorAll('li')) {
          const match = !wanted || item.dataset.name.includes(wanted);
          item.hidden = !match;
          inGroup += match ? 1 : 0;
        }
        group.hidden = inGroup === 0;
        shown += inGroup;
      }
      none.textContent = shown ? '' : t.noMatch(query.trim());
    };
    const search = flow.integrations.length >= SEARCH_FROM
      ? el('label', { class: 'search' }, t.search, el('input', {
        type: 'search', name: 'search', placeholder: t.searchPlaceholder, autocomplete: 'off',
        on: { input: (event) => filter(event.target.value) },
      }))
      : null;
    show(
      el('h1', { tabindex: '-1' }, t.pick),
      el('p', { class: 'muted' }, t.pickLead(flow.clientAppName || '')),
      search,
      lists,
      none,
      alertBox(flow.errorCode),
      el('div', { class: 'actions' }, cancelButton()),
    );
  }

  // An OAuth integration: the provider's own page, in this tab (hosted) or
  // in a popup (embedded: providers refuse to be framed, and the client
  // app's page must stay where it is). The popup's result reaches this page
  // through the flow, which it polls.
  let oauthPoll = null;

  async function startOAuth() {
    const embedded = Boolean(host);
    // Opened within the click, or the browser blocks it.
    const popup = embedded ? window.open('', 'linkd-oauth', 'popup,width=520,height=720') : null;
    if (embedded && !popup) {
      view.querySelector('.alert').textContent = t.popupBlocked;
      return;
    }
    setBusy(true);
    try {
      const started = await api('/v1/flow/oauth/start', { display: embedded ? 'popup' : 'page' });
      if (!embedded) {
        window.location.assign(started.authorizationUrl);
        return;
      }
      popup.location.href = started.authorizationUrl;
      setBusy(false);
      view.querySelector('.status').textContent = t.oauthWaiting(flow.integrationName);
      clearTimeout(oauthPoll);
      const poll = async () => {
        try {
          const next = await api('/v1/flow');
          if (next.step !== 'login' || next.errorCode !== flow.errorCode) return render(next);
        } catch (err) {
          return failed(err);
        }
        oauthPoll = setTimeout(poll, POLL_MS);
      };
      oauthPoll = setTimeout(poll, POLL_MS);
    } catch (err) {
      popup?.close();
      await failed(err);
    }
  }

  function renderOAuthLogin() {
    show(
      el('h1', { tabindex: '-1' }, t.login(flow.integrationName)),
      el('p', { class: 'muted' }, t.oauthLead(flow.integrationName)),
      el('p', { class: 'status', role: 'status' }),
      alertBox(flow.errorCode),
      el('div', { class: 'actions' },
        el('button', { type: 'button', class: 'primary', 'data-oauth': 'start', on: { click: startOAuth } }, t.continueTo(flow.integrationName)),
        cancelButton()),
    );
  }

  function renderLogin() {
    if (flow.loginMethod === 'oauth2') return renderOAuthLogin();
    // After a refused login the end user retypes only the password.
    const kept = flow.errorCode && typed.integration === flow.integrationId ? typed.fields : {};
    const inputs = flow.credentialFields.map((field) =>
      el('label', {}, field.label, el('input', {
        name: field.name,
        type: field.secret ? 'password' : 'text',
        autocomplete: field.secret ? 'current-password' : 'username',
        autocapitalize: 'none',
        spellcheck: 'false',
        required: true,
        maxlength: '1024',
        value: field.secret ? null : kept[field.name] ?? null,
      })));
    const form = el('form', {
      on: {
        submit: (event) => {
          event.preventDefault();
          const fields = {};
          for (const input of form.querySelectorAll('input')) fields[input.name] = input.value;
          const secret = new Set(flow.credentialFields.filter((f) => f.secret).map((f) => f.name));
          typed = {
            integration: flow.integrationId,
            fields: Object.fromEntries(Object.entries(fields).filter(([name]) => !secret.has(name))),
          };
          act('/v1/flow/credentials', { fields });
        },
      },
    }, inputs, alertBox(flow.errorCode), el('div', { class: 'actions' }, el('button', { type: 'submit', class: 'primary' }, t.submit), cancelButton()));
    show(el('h1', { tabindex: '-1' }, t.login(flow.integrationName)), el('p', { class: 'muted' }, t.loginLead), form);
    // Straight to the first field still empty (the password after a refusal).
    const empty = [...form.querySelectorAll('input')].find((input) => !input.value);
    empty?.focus();
  }

  function renderTwoFactor() {
    const form = el('form', {
      on: {
        submit: (event) => {
          event.preventDefault();
          act('/v1/flow/second-factor', { code: form.querySelector('input').value.trim() });
        },
      },
    },
    el('label', {}, t.code, el('input', { name: 'code', inputmode: 'numeric', autocomplete: 'one-time-code', required: true, maxlength: '32' })),
    alertBox(flow.errorCode),
    el('div', { class: 'actions' }, el('button', { type: 'submit', class: 'primary' }, t.verify), cancelButton()));
    show(el('h1', { tabindex: '-1' }, t.twoFactor), el('p', { class: 'muted' }, flow.secondFactorPrompt || ''), form);
  }

  function renderAuthorization() {
    show(
      el('h1', { tabindex: '-1' }, t.consent(flow.clientAppName || '', flow.integrationName)),
      el('p', { class: 'muted' }, t.consentLead(flow.clientAppName || '')),
      flow.scopes?.length ? el('p', {}, t.scopes) : null,
      flow.scopes?.length ? el('ul', { class: 'scopes' }, flow.scopes.map((s) => el('li', { 'data-scope': s }, t.scope[s] || s))) : null,
      alertBox(flow.errorCode),
      el('div', { class: 'actions' },
        el('button', { type: 'button', class: 'primary', on: { click: () => act('/v1/flow/approve', {}) } }, t.allow),
        cancelButton()),
    );
  }

  function renderProcessing() {
    message(t.working);
    setTimeout(() => api('/v1/flow').then(render, failed), POLL_MS);
  }

  function renderDone() {
    const text = flow.outcome === 'success' ? t.success
      : flow.outcome === 'cancelled' ? t.cancelled
        : flow.errorCode === 'session_expired' ? t.expired
          // A known reason says what happened; only an unexplained failure says "something went wrong".
          : flow.errorCode ? `${errorText(flow.errorCode)} ${t.returning}` : t.failed;
    message(text);
    const result = flow.outcome === 'success'
      ? { type: 'success', connectionId: flow.connectionId, linkId: flow.linkId, clientReferenceId: flow.clientReferenceId }
      : { type: 'exit', status: flow.outcome, step: flow.cancelledStep, errorCode: flow.outcome === 'error' ? flow.errorCode : null, clientReferenceId: flow.clientReferenceId };
    setTimeout(() => {
      if (post(result)) return;
      if (flow.redirectUrl) window.location.assign(flow.redirectUrl);
      else view.append(el('p', { class: 'muted' }, t.close));
    }, REDIRECT_DELAY_MS);
  }

  // The client app's brand: its accent on the buttons (with black or white
  // text, whichever contrasts more) and its logo and name in the header.
  let branded = false;
  const header = document.querySelector('header.brand');
  const linkdHeader = header ? [...header.childNodes].map((node) => node.cloneNode(true)) : [];

  function luminance(hex) {
    const channel = (i) => {
      const c = parseInt(hex.slice(i, i + 2), 16) / 255;
      return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
    };
    return 0.2126 * channel(1) + 0.7152 * channel(3) + 0.0722 * channel(5);
  }

  function applyBranding() {
    if (branded) return;
    branded = true;
    const accent = flow.clientAccentColor;
    const root = document.documentElement.style;
    root.removeProperty('--accent');
    root.removeProperty('--accent-fg');
    if (accent && /^#[0-9a-f]{6}$/.test(accent)) {
      const l = luminance(accent);
      const onWhite = 1.05 / (l + 0.05);
      const onBlack = (l + 0.05) / 0.05;
      root.setProperty('--accent', accent);
      root.setProperty('--accent-fg', onWhite >= onBlack ? '#fff' : '#000');
    }
    if (!header) return;
    if (!flow.clientLogoUrl) {
      header.replaceChildren(...linkdHeader.map((node) => node.cloneNode(true)));
    } else {
      header.replaceChildren(
        el('img', { class: 'client-logo', src: flow.clientLogoUrl, alt: '', width: '32', height: '32' }),
        el('span', { class: 'client-name' }, flow.clientAppName || ''),
      );
    }
  }

  function render(next) {
    clearTimeout(oauthPoll);
    flow = next;
    applyBranding();
    t = TEXT[flow.lang] || TEXT.en;
    document.documentElement.lang = TEXT[flow.lang] ? flow.lang : 'en';
    setBusy(false);
    if (flow.step !== lastStep) {
      lastStep = flow.step;
      post({ type: 'event', event: { step: flow.step } });
    }
    switch (flow.step) {
      case 'pre-login': return renderPreLogin();
      case 'login': return renderLogin();
      case '2fa': return renderTwoFactor();
      case 'authorization': return renderAuthorization();
      case 'processing': return renderProcessing();
      default: return renderDone();
    }
  }

  // ---- start ---------------------------------------------------------------

  async function start() {
    // Link session: the token is in the fragment; keep it for reloads of
    // this tab and take it out of the address bar.
    const fragment = new URLSearchParams(window.location.hash.slice(1));
    const claim = window.location.pathname.match(/^\/appclip\/(link_[0-9a-f]{32})$/);
    const oauthError = fragment.get('oauth_error');
    if (fragment.has('oauth') || oauthError) {
      history.replaceState(null, '', window.location.pathname);
    }
    if (fragment.get('oauth') === 'popup' || (oauthError && window.name === 'linkd-oauth')) {
      // The provider popup of an embedded page, back from the provider: the
      // embedded page reads the outcome from the flow.
      message(oauthError ? t.oauthInvalid : t.close, oauthError ? el('p', { class: 'muted' }, t.close) : null);
      window.close();
      return;
    }
    try {
      if (fragment.get('token')) {
        token = fragment.get('token');
        sessionStorage.setItem('linkd.token', token);
        history.replaceState(null, '', window.location.pathname + window.location.search);
      } else if (claim && new URLSearchParams(window.location.search).get('code')) {
        const code = new URLSearchParams(window.location.search).get('code');
        const claimed = await api('/v1/flow/claim', { linkId: claim[1], claimCode: code });
        token = claimed.flowToken;
        sessionStorage.setItem('linkd.token', token);
        history.replaceState(null, '', window.location.pathname);
        return render(claimed.flow);
      } else {
        token = sessionStorage.getItem('linkd.token');
      }
      if (!token) return message(oauthError ? t.oauthInvalid : t.invalid);
      const initial = await api('/v1/flow');
      if (initial.step === 'done' && initial.errorCode !== 'session_expired') {
        // Finished in an earlier visit: a session URL is single-use.
        t = TEXT[initial.lang] || TEXT.en;
        return message(t.finished, el('p', { class: 'muted' }, t.close));
      }
      render(initial);
      if (oauthError && view.querySelector('.alert')) view.querySelector('.alert').textContent = t.oauthInvalid;
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) return message(t.invalid);
      if (err instanceof ApiError && err.status === 409) return message(t.finished, el('p', { class: 'muted' }, t.close));
      if (err instanceof ApiError && err.status === 410) return message(t.expired);
      failed(err);
    }
  }

  // A new session URL opened in a tab that shows this page changes only
  // the fragment: start the new flow.
  window.addEventListener('hashchange', () => {
    if (!new URLSearchParams(window.location.hash.slice(1)).get('token')) return;
    clearTimeout(oauthPoll);
    flow = null;
    lastStep = null;
    typed = {};
    token = null;
    branded = false;
    start();
  });

  start();
})();
