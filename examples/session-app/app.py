"""A web application with a login of its own whose pages receive live events from Tidings,
without a JWT in the browser.

The browser holds the application's session cookie and nothing else. Its page subscribes with
the browser client (clients/js, served here at /client/) to /sse/event-stream: every event of
the user's session, on one connection for all the user's tabs, resumed across reloads. The
proxy in front (nginx.conf here) sends that request to the Tidings instances, which ask this
application who the caller is (POST /tidings/auth, the authorization callback, with the
browser's cookies) and let the stream in for the session this application names. The
application sends events through the session API with a publisher token, and hears who is
online from Tidings' lifecycle webhooks (POST /tidings/events).

    python3 app.py --port 8000

Environment:
    TIDINGS_URL              where the application publishes (an instance, or the proxy)
    TIDINGS_PUBLISHER_TOKEN  a token with the right to publish to the sessions' topics, e.g.
                             tidings token --publish 'urn:tidings:session:{id}'
    TIDINGS_ADMIN_KEY        the hubs' --admin-key: a logout then ends the user's streams on
                             every instance at once (without it they end when the grant does)
    WEBHOOK_SECRET           the hubs' --webhook-secret (webhooks are refused without it)
    APP_SECRET               signs the session cookie (random when unset: logins end with
                             the process)
    TIDINGS_CLIENT_DIST      the browser client's build (clients/js/dist of this repository
                             by default: `npm ci && npm run build` in clients/js)
"""

import argparse
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from flask import Flask, Response, jsonify, redirect, request, send_from_directory, session

# Demo accounts. A real application has its own users.
USERS = {"alice": "wonderland", "bob": "builder"}
# How long Tidings may keep a stream open on one answer: then it asks again (a user who
# logged out meanwhile is turned away).
GRANT_SECONDS = 300

app = Flask(__name__)
app.secret_key = os.environ.get("APP_SECRET") or secrets.token_hex(32)
app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax")

# The browser client's modules, as `npm run build` in clients/js leaves them.
CLIENT_DIST = Path(
    os.environ.get("TIDINGS_CLIENT_DIST") or Path(__file__).resolve().parents[2] / "clients" / "js" / "dist"
)

# Who is online, as the webhooks tell it (session -> scope), and the last events received.
online = {}
webhook_log = []
lock = threading.Lock()


def call_tidings(path, body, credential):
    """POSTs JSON to Tidings; its JSON answer."""
    req = urllib.request.Request(
        os.environ["TIDINGS_URL"].rstrip("/") + path,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": "Bearer " + credential},
    )
    with urllib.request.urlopen(req, timeout=5) as answer:
        return json.load(answer)


def publish(user, event_name, payload):
    """Sends an event to every stream of `user`'s session, through the session API."""
    body = {"sessionId": user, "eventName": event_name, "payload": payload}
    return call_tidings("/sse/events", body, os.environ["TIDINGS_PUBLISHER_TOKEN"])["id"]


@app.get("/")
def index():
    user = session.get("user")
    if user is None:
        return LOGIN_PAGE
    return LIVE_PAGE.replace("{user}", user)


@app.post("/login")
def login():
    name = request.form.get("name", "")
    if USERS.get(name) != request.form.get("password"):
        return LOGIN_PAGE.replace("<!--error-->", "<p class=error>Unknown name or password.</p>"), 401
    session["user"] = name
    return redirect("/")


@app.post("/logout")
def logout():
    """Ends the login, and with it every stream of the user on every instance: each gets a
    final `tidings-disconnect` event; if it comes back, the callback below turns it away."""
    user = session.pop("user", None)
    session.clear()
    admin_key = os.environ.get("TIDINGS_ADMIN_KEY")
    if user and admin_key:
        try:
            call_tidings("/admin/disconnect", {"subject": user, "reason": "logged out"}, admin_key)
        except (urllib.error.URLError, OSError) as e:
            app.logger.warning("could not end %s's streams: %s", user, e)
    if request.headers.get("Accept", "").startswith("application/json"):
        return jsonify(loggedOut=True)
    return redirect("/")


@app.post("/send")
def send():
    """The page's form: the user sends a message to their own session (all their tabs)."""
    user = session.get("user")
    if user is None:
        return jsonify(detail="log in first"), 401
    text = (request.get_json(silent=True) or {}).get("text", "")[:500]
    return jsonify(id=publish(user, "chat", {"from": user, "text": text, "at": time.time()}))


@app.post("/tidings/auth")
def tidings_auth():
    """The authorization callback: Tidings passes on the browser's cookies (so Flask's session
    is the user's) and says what the stream asks for."""
    user = session.get("user")
    if user is None:
        return jsonify(detail="log in first"), 401
    asked = request.get_json(silent=True) or {}
    if asked.get("api") != "session":
        # This application's pages only use the session API.
        return jsonify(detail="only session streams here"), 403
    # The subject names the user: a logout ends every stream of theirs, on every device.
    return jsonify(session=user, subject=user, expiresIn=GRANT_SECONDS)


@app.post("/tidings/events")
def tidings_events():
    """Lifecycle webhooks: who came online, who left."""
    secret = os.environ.get("WEBHOOK_SECRET", "").encode()
    if not secret or not verify(secret, request.headers.get("Tidings-Signature", ""), request.get_data()):
        return jsonify(detail="bad signature"), 401
    batch = request.get_json()
    with lock:
        for event in batch["events"]:
            if event["type"] == "session.online":
                online[event["session"]] = event["scope"]
            elif event["type"] == "session.offline":
                online.pop(event["session"], None)
            webhook_log.append(event)
        del webhook_log[:-100]
    return "", 204


def verify(secret, header, body):
    """Checks `t=<secs>,v1=<hex>`: HMAC-SHA256 of "<t>.<body>", and a recent t."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        signed = fields["t"].encode() + b"." + body
        expected = hmac.new(secret, signed, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, fields["v1"]) and abs(time.time() - int(fields["t"])) < 300
    except (KeyError, ValueError):
        return False


@app.get("/client/<name>.js")
def client_module(name):
    """The browser client's ES modules (the page imports /client/index.js)."""
    if not (CLIENT_DIST / "index.js").is_file():
        return Response(
            f"the browser client is not built in {CLIENT_DIST}: run `npm ci && npm run build` in clients/js\n",
            status=404,
            mimetype="text/plain",
        )
    return send_from_directory(CLIENT_DIST, f"{name}.js", mimetype="text/javascript")


@app.get("/online")
def who_is_online():
    with lock:
        return jsonify(online=sorted(online), events=webhook_log[-20:])


LOGIN_PAGE = """<!doctype html>
<meta charset=utf-8><title>Log in</title>
<h1>Log in</h1>
<!--error-->
<form method=post action=/login>
  <label>Name <input name=name autocomplete=username></label>
  <label>Password <input name=password type=password autocomplete=current-password></label>
  <button>Log in</button>
</form>
<p>Demo accounts: alice / wonderland, bob / builder.</p>
"""

LIVE_PAGE = """<!doctype html>
<meta charset=utf-8><title>Live</title>
<h1>Hello, {user}</h1>
<p>Stream: <b id=status>connecting</b></p>
<form id=say><input id=text placeholder="A message to all your tabs"><button>Send</button></form>
<ul id=log></ul>
<form id=logout method=post action=/logout><button>Log out</button></form>
<script type=module>
  // Every event of the session, on one connection for all of this user's tabs (the browser
  // client elects one tab to hold it), resumed after a reload from the last event seen.
  import { Tidings } from '/client/index.js';
  const events = new Tidings().session(['chat', 'notice']);
  const status = document.getElementById('status');
  window.received = [];
  events.on('update', (update) => {
    window.received.push({ name: update.type, id: update.id, data: update.json() });
    const item = document.createElement('li');
    item.textContent = update.type + ': ' + update.data;
    document.getElementById('log').append(item);
  });
  // Tidings ended the stream (a logout, an operator): the client stays away unless told to
  // come back.
  events.on('disconnect', (detail) => {
    window.disconnected = detail;
    if (!detail.reconnect) status.textContent = 'disconnected: ' + detail.reason;
  });
  events.on('state', (state) => {
    if (!window.disconnected || window.disconnected.reconnect) status.textContent = state;
  });
  events.on('error', (error) => { status.textContent = 'closed: ' + error.message; });
  // Logging out keeps the page, to show the stream ending; the server ends it.
  document.getElementById('logout').onsubmit = async (e) => {
    e.preventDefault();
    await fetch('/logout', { method: 'POST', headers: { accept: 'application/json' } });
    document.getElementById('say').remove();
    e.target.outerHTML = '<p>Logged out. <a href="/">Log in again</a></p>';
  };
  document.getElementById('say').onsubmit = async (e) => {
    e.preventDefault();
    const text = document.getElementById('text');
    await fetch('/send', { method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ text: text.value }) });
    text.value = '';
  };
</script>
"""

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    app.run(host=args.host, port=args.port, threaded=True)
