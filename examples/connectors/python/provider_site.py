"""Acme Mobile: a small provider website for the example connector.

It behaves like the carrier sites real connectors log in to: a login form
that sets a session cookie, a second-factor step for some accounts, an
account area whose pages call JSON endpoints (billing statements, saved
payment methods, adding a card, after which the session cookie is
rotated), and logout. Nothing in it knows about linkd.

    python3 provider_site.py --port 7100

Accounts (username / password):

    alice / correct-horse     logs in
    bob   / battery-staple    asks for a second factor: 424242
    carol / tr0ub4dor         the account is locked

`/_support/...` is the provider's own back office, used by tests to see
what the connector did, to end an account's sessions as a password change
would, and to shorten them as a security policy might. It is not something a connector calls.
"""

import argparse
import html
import json
import secrets
import threading
import time
from datetime import date, timedelta
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

SESSION_SECONDS = 12 * 60 * 60
PENDING_SECONDS = 5 * 60
SECOND_FACTOR_CODE = "424242"

ACCOUNTS = {
    "alice": {"password": "correct-horse", "second_factor": False, "locked": False},
    "bob": {"password": "battery-staple", "second_factor": True, "locked": False},
    "carol": {"password": "tr0ub4dor", "second_factor": False, "locked": True},
}


class Site:
    """The provider's state: sessions and each account's saved cards."""

    def __init__(self):
        self.lock = threading.Lock()
        self.sessions = {}  # token -> (username, expires_at)
        self.pending = {}  # token -> (username, expires_at)
        self.cards = {name: [] for name in ACCOUNTS}
        self.logins = {name: 0 for name in ACCOUNTS}
        self.logouts = {name: 0 for name in ACCOUNTS}

    def open_session(self, username):
        token = secrets.token_urlsafe(24)
        with self.lock:
            self.sessions[token] = (username, time.time() + SESSION_SECONDS)
            self.logins[username] += 1
        return token

    def user_of(self, token):
        with self.lock:
            found = self.sessions.get(token or "")
            if not found or found[1] < time.time():
                return None
            return found[0]

    def end_sessions(self, username):
        with self.lock:
            for token in [t for t, (u, _) in self.sessions.items() if u == username]:
                del self.sessions[token]


def statements(username, months):
    """Deterministic monthly statements, newest first."""
    base = 40 + (sum(map(ord, username)) % 30)
    today = date.today().replace(day=1)
    out = []
    for i in range(months):
        period = (today - timedelta(days=31 * i)).replace(day=1)
        amount = round(base + i * 1.25, 2)
        out.append(
            {
                "period": period.strftime("%Y-%m"),
                "statementDate": period.isoformat(),
                "dueDate": (period + timedelta(days=20)).isoformat(),
                "amountDue": amount,
                "currency": "USD",
                "status": "due" if i == 0 else "paid",
                "lines": [
                    {"description": "Unlimited plan", "amount": round(amount - 5, 2)},
                    {"description": "Taxes and fees", "amount": 5.0},
                ],
            }
        )
    return out


def brand_of(number):
    if number.startswith("4"):
        return "visa"
    if number[:2] in {"51", "52", "53", "54", "55"}:
        return "mastercard"
    if number[:2] in {"34", "37"}:
        return "amex"
    return "card"


def make_handler(site):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # quiet: the tests read stdout
            pass

        # --- helpers -----------------------------------------------------
        def cookie(self, name):
            jar = SimpleCookie(self.headers.get("Cookie", ""))
            return jar[name].value if name in jar else None

        def body(self):
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if self.headers.get("Content-Type", "").startswith("application/json"):
                return json.loads(raw or b"{}")
            return {k: v[0] for k, v in parse_qs(raw.decode()).items()}

        def send(self, status, body, content_type="text/html; charset=utf-8", headers=()):
            data = body.encode() if isinstance(body, str) else body
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def json(self, status, value):
            self.send(status, json.dumps(value), "application/json")

        def page(self, status, title, inner, headers=()):
            self.send(
                status,
                f"<!doctype html><title>{html.escape(title)} · Acme Mobile</title>"
                f"<h1>{html.escape(title)}</h1>{inner}",
                headers=headers,
            )

        def redirect(self, to, headers=()):
            self.send(303, "", headers=[("Location", to), *headers])

        def signed_in(self):
            return site.user_of(self.cookie("acme_session"))

        # --- routes ------------------------------------------------------
        def do_GET(self):
            url = urlparse(self.path)
            if url.path == "/login":
                return self.page(
                    200,
                    "Sign in",
                    '<form method="post" action="/login">'
                    '<input name="username"><input name="password" type="password">'
                    "<button>Sign in</button></form>",
                )
            if url.path == "/verify":
                return self.page(
                    200,
                    "Enter your code",
                    '<p class="prompt">Enter the code we texted to your phone ending in 0199.</p>'
                    '<form method="post" action="/verify"><input name="code"><button>Verify</button></form>',
                )
            if url.path == "/account":
                user = self.signed_in()
                if not user:
                    return self.redirect("/login")
                with site.lock:
                    expires = site.sessions[self.cookie("acme_session")][1]
                return self.page(
                    200,
                    "Your account",
                    f"<p>Signed in as {html.escape(user)}</p>"
                    f'<p class="session-ends" data-epoch="{int(expires)}">Your session ends at '
                    f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(expires))}.</p>",
                )
            if url.path == "/api/billing":
                user = self.signed_in()
                if not user:
                    return self.json(401, {"error": "signed_out"})
                months = int(parse_qs(url.query).get("months", ["3"])[0])
                return self.json(200, {"statements": statements(user, months)})
            if url.path == "/api/payment-methods":
                user = self.signed_in()
                if not user:
                    return self.json(401, {"error": "signed_out"})
                with site.lock:
                    return self.json(200, {"paymentMethods": list(site.cards[user])})
            if url.path == "/_support/account":
                user = parse_qs(url.query).get("username", [""])[0]
                if user not in ACCOUNTS:
                    return self.json(404, {"error": "no such account"})
                with site.lock:
                    active = sum(1 for u, _ in site.sessions.values() if u == user)
                    return self.json(
                        200,
                        {
                            "paymentMethods": list(site.cards[user]),
                            "activeSessions": active,
                            "logins": site.logins[user],
                            "logouts": site.logouts[user],
                        },
                    )
            return self.json(404, {"error": "not found"})

        def do_POST(self):
            url = urlparse(self.path)
            if url.path == "/login":
                form = self.body()
                account = ACCOUNTS.get(form.get("username", ""))
                if not account or not secrets.compare_digest(
                    account["password"], form.get("password", "")
                ):
                    return self.page(401, "Sign in", '<p class="error">Invalid username or password.</p>')
                if account["locked"]:
                    return self.page(423, "Account locked", '<p class="error">This account is locked.</p>')
                username = form["username"]
                if account["second_factor"]:
                    token = secrets.token_urlsafe(24)
                    with site.lock:
                        site.pending[token] = (username, time.time() + PENDING_SECONDS)
                    return self.redirect("/verify", [("Set-Cookie", f"acme_pending={token}; HttpOnly; Path=/")])
                token = site.open_session(username)
                return self.redirect(
                    "/account",
                    [("Set-Cookie", f"acme_session={token}; Max-Age={SESSION_SECONDS}; HttpOnly; Path=/")],
                )
            if url.path == "/verify":
                with site.lock:
                    pending = site.pending.get(self.cookie("acme_pending") or "")
                if not pending or pending[1] < time.time():
                    return self.page(410, "Code expired", '<p class="error">Start again.</p>')
                if self.body().get("code") != SECOND_FACTOR_CODE:
                    return self.page(401, "Enter your code", '<p class="error">That code is not right.</p>')
                with site.lock:
                    site.pending.pop(self.cookie("acme_pending"), None)
                token = site.open_session(pending[0])
                return self.redirect(
                    "/account",
                    [("Set-Cookie", f"acme_session={token}; Max-Age={SESSION_SECONDS}; HttpOnly; Path=/")],
                )
            if url.path == "/api/payment-methods":
                user = self.signed_in()
                if not user:
                    return self.json(401, {"error": "signed_out"})
                card = self.body()
                number = str(card.get("cardNumber", ""))
                if card.get("cardNumber", "").startswith("4000000000000002"):
                    return self.json(402, {"error": "card_declined", "message": "The card was declined."})
                make_default = card.get("makeDefault", True)
                saved = {
                    "id": "pm_" + secrets.token_hex(6),
                    "type": "card",
                    "brand": brand_of(number),
                    "last4": number[-4:],
                    "expirationDate": card.get("expirationDate", ""),
                    "nameOnCard": card.get("nameOnCard", ""),
                    "isDefault": bool(make_default),
                }
                with site.lock:
                    if make_default:
                        for other in site.cards[user]:
                            other["isDefault"] = False
                    site.cards[user].append(saved)
                    # After a change to the wallet the session is rotated:
                    # the old cookie stops working.
                    site.sessions.pop(self.cookie("acme_session"), None)
                token = site.open_session(user)
                with site.lock:
                    site.logins[user] -= 1  # a rotation, not a login
                return self.send(
                    201,
                    json.dumps({"paymentMethod": saved}),
                    "application/json",
                    [("Set-Cookie", f"acme_session={token}; Max-Age={SESSION_SECONDS}; HttpOnly; Path=/")],
                )
            if url.path == "/logout":
                user = self.signed_in()
                token = self.cookie("acme_session")
                with site.lock:
                    if user:
                        site.logouts[user] += 1
                    site.sessions.pop(token or "", None)
                return self.redirect("/login", [("Set-Cookie", "acme_session=; Max-Age=0; Path=/")])
            if url.path == "/_support/end-sessions":
                user = parse_qs(url.query).get("username", [""])[0]
                site.end_sessions(user)
                return self.json(200, {"ended": user})
            if url.path == "/_support/shorten-sessions":
                query = parse_qs(url.query)
                user = query.get("username", [""])[0]
                until = time.time() + int(query.get("seconds", ["3600"])[0])
                with site.lock:
                    for token, (owner, _) in list(site.sessions.items()):
                        if owner == user:
                            site.sessions[token] = (owner, until)
                return self.json(200, {"until": int(until)})
            return self.json(404, {"error": "not found"})

    return Handler


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7100, help="0 picks a free port")
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), make_handler(Site()))
    # The first line says where it listens, for whoever started it.
    print(f"acme-mobile listening on http://{args.host}:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
