"""The page frame: escaping, the navigation, the style sheet and the one
script (the live jobs table). Nothing is fetched from outside; the script
runs under a per-response nonce (Content-Security-Policy), so a `<script>`
that reached a value could not run even if escaping missed it."""

from __future__ import annotations

import html
from typing import Any
from urllib.parse import urlencode

from ftctl.providers.keys import redact

STATE_COLOURS = {"prepared": "#b58900", "queued": "#2aa198", "running": "#268bd2", "succeeded": "#2e8b57",
                 "failed": "#dc322f", "cancelled": "#d33682"}
NAV = (("/", "Jobs"), ("/pipelines", "Pipelines"), ("/spend", "Spend"), ("/providers", "Providers"))

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
nav{background:#263238;padding:8px 16px}nav a{color:#eceff1;margin-right:18px;text-decoration:none}
nav a.on{font-weight:bold;border-bottom:2px solid #80cbc4}main{padding:12px 16px}
table{border-collapse:collapse;background:#fff}td,th{border-bottom:1px solid #e0e0e0;padding:3px 8px;
text-align:left;vertical-align:top}th{background:#eceff1}.filters a{margin-right:8px}.filters a.on{font-weight:bold}
.state{font-weight:bold}.muted{color:#777}.err{color:#b71c1c}svg{background:#fff;border:1px solid #e0e0e0}
"""
for _state, _colour in STATE_COLOURS.items():
    CSS += f".s-{_state}{{color:{_colour}}}"

# the jobs page: rows replaced as the events stream says they changed
LIVE_SCRIPT = """
(function(){var t=document.getElementById('jobs');if(!t||!window.EventSource)return;
var src=new EventSource(t.dataset.stream);src.addEventListener('job',function(e){var d=JSON.parse(e.data);
var old=document.getElementById('job-'+d.id);if(d.remove){if(old)old.remove();return;}
var body=document.createElement('tbody');body.innerHTML=d.html;var row=body.firstElementChild;
if(old){old.replaceWith(row);}else{t.tBodies[0].appendChild(row);}
document.body.dataset.events=String(Number(document.body.dataset.events||0)+1);});
src.onopen=function(){document.body.dataset.live='1';};})();
"""


def esc(value: Any) -> str:
    """A value as text in HTML: keys masked, then every special character escaped."""
    return html.escape(str(redact("" if value is None else str(value))), quote=True)


def esc_all(values: list[str]) -> list[str]:
    """`esc` of each of many values, masked and escaped as one text (a table
    row: one pass instead of one a cell)."""
    return html.escape(str(redact("\x1f".join(values))), quote=True).split("\x1f")


def link(path: str, query: dict[str, Any] | None = None) -> str:
    """A URL of this dashboard (escaped for an attribute)."""
    query = {k: v for k, v in (query or {}).items() if v not in (None, "", [])}
    return esc(path + ("?" + urlencode(query, doseq=True) if query else ""))


def page(title: str, body: str, *, active: str, nonce: str, script: bool = False) -> str:
    nav = "".join(f'<a href="{p}"{" class=on" if p == active else ""}>{esc(name)}</a>' for p, name in NAV)
    js = f'<script nonce="{nonce}">{LIVE_SCRIPT}</script>' if script else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)} · ftctl</title>'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f'<style nonce="{nonce}">{CSS}</style></head><body><nav>{nav}<span class="muted">ftctl</span></nav>'
            f'<main><h1>{esc(title)}</h1>{body}</main>{js}</body></html>')


def table(headers: tuple[str, ...], rows: list[str], *, attrs: str = "") -> str:
    """`rows`: each an already escaped `<tr>`."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    return f"<table{attrs}><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def tr(cells: list[str], attrs: str = "") -> str:
    """A row of already escaped cells."""
    return f"<tr{attrs}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def login_page(nonce: str, wrong: bool = False) -> str:
    note = '<p class="err">That is not the token.</p>' if wrong else ""
    form = ('<form method="post" action="/login"><label>Token <input type="password" name="token" '
            'autocomplete="current-password" autofocus></label> <button>Log in</button></form>')
    return page("Log in", note + '<p>This dashboard needs its bearer token ([dashboard] token_env, token_file or '
                "token_credential).</p>" + form, active="", nonce=nonce)
