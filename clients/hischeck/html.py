"""The self-contained HTML report of check runs: inline CSS, no scripts, no
fetches. Per run: the verdict, the operator's instructions, every check with its
result and message, and the journal excerpt with the entries failing checks name
highlighted (and linked from the check)."""

from __future__ import annotations

import json
from typing import Any

import jinja2

TEMPLATE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>settlesim his-check — {{ report.headline }}</title>
<style>
  body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 80em; padding: 0 1em; color: #222; }
  h1 { font-size: 1.5em; margin-bottom: .2em; }
  .meta { color: #666; }
  .verdict { border-radius: 6px; padding: .8em 1.2em; margin: 1em 0; font-size: 1.15em; }
  .verdict.ok { background: #e7f6e9; border: 1px solid #7bc47f; }
  .verdict.bad { background: #fde8e8; border: 1px solid #e08080; }
  table { border-collapse: collapse; margin: .4em 0 1em; }
  th, td { border-bottom: 1px solid #ddd; padding: .25em .7em; text-align: left; vertical-align: top; }
  th { background: #f4f4f4; }
  .passed { color: #17762a; } .failed { color: #b31d1d; } .not_applicable { color: #888; }
  tr.named { background: #fff4d6; }
  code, .mono { font-family: ui-monospace, monospace; font-size: 12px; }
  .why { white-space: pre-wrap; background: #fbfaf3; border-left: 3px solid #d8c97a; padding: .4em .8em; }
  pre { background: #f7f7f7; padding: .6em; overflow-x: auto; font-size: 12px; white-space: pre-wrap; }
  section.run { border: 1px solid #ddd; border-radius: 6px; margin: 1.5em 0; padding: .3em 1em 1em; }
</style>
</head>
<body>
<h1>settlesim his-check</h1>
<section id="summary" class="verdict {{ 'ok' if report.passed else 'bad' }}">
  <strong>{{ 'PASSED' if report.passed else 'FAILED' }}</strong> — {{ report.headline }}
</section>
{% for run in report.runs %}
<section class="run" id="run-{{ run.scenario }}">
  <h2><span class="{{ 'passed' if run.passed else 'failed' }}">{{ 'PASSED' if run.passed else 'FAILED' }}</span>
    {{ run.scenario }} — {{ run.title }}</h2>
  <p class="meta">run <code>{{ run.run.run_id }}</code> · institution <code>{{ run.run.institution_code }}</code>
    · target <code>{{ run.target }}</code> · session <code>{{ run.run.session }}</code>
    · opened {{ run.run.opened_at }}
    {%- if run.driver_exit is not none %} · driver exit {{ run.driver_exit }}{% endif %}</p>
  <div class="why">{{ run.why }}</div>
  <h3>What the HIS was asked to do</h3>
  <ul class="instructions">{% for line in run.instructions %}<li>{{ line }}</li>{% endfor %}</ul>
  <h3>Checks</h3>
  <table class="checks" id="checks-{{ run.scenario }}">
    <tr><th>check</th><th>severity</th><th>result</th><th>message</th><th>entries</th></tr>
    {% for c in run.checks %}
    <tr class="check" data-check="{{ c.id }}" data-status="{{ c.status }}">
      <td><code>{{ c.id }}</code><br><span class="meta">{{ c.title }}</span></td>
      <td>{{ c.severity }}</td>
      <td class="{{ c.status }}">{{ c.status | replace("_", " ") }}</td>
      <td>{{ c.message }}</td>
      <td>{% for s in c.entries %}<a href="#{{ run.scenario }}-entry-{{ s }}">#{{ s }}</a> {% endfor %}</td>
    </tr>
    {% endfor %}
  </table>
  <h3>Journal</h3>
  {% set named = run.checks | selectattr("status", "equalto", "failed") | map(attribute="entries") | sum(start=[]) %}
  <table class="journal mono" id="journal-{{ run.scenario }}">
    <tr><th>#</th><th>time (UTC)</th><th>rpc</th><th>msgid</th><th>outcome</th><th>fault</th><th>ms</th>
      <th>request / answer</th></tr>
    {% for e in run.journal %}
    <tr id="{{ run.scenario }}-entry-{{ e.seq }}" class="entry{{ ' named' if e.seq in named }}">
      <td>{{ e.seq }}</td><td>{{ e.time[11:23] }}</td><td>{{ e.rpc }}{% if e.actor == "setup" %} (setup){% endif %}</td>
      <td>{{ e.msgid or "-" }}</td>
      <td class="{{ 'passed' if e.code == 'OK' else 'failed' }}">{{ e.code }} {{ e.reason }}</td>
      <td>{{ e.fault }}{% if e.undelivered %} answered after the deadline{% endif %}</td>
      <td>{{ "%.1f"|format(e.latency_ms) }}</td>
      <td><details><summary>{{ run.journal_lines[loop.index0][60:] }}</summary>
        <pre>request {{ e.request | pretty }}</pre><pre>answer  {{ e.answer | pretty }}</pre></details></td>
    </tr>
    {% endfor %}
  </table>
  <h3>Ledger at the end (the run's session)</h3>
  <table class="settlements mono">
    <tr><th>settlement</th><th>msgid</th><th>person</th><th>disease</th><th>visit</th><th>status</th><th>total</th><th>fund</th><th>patient</th></tr>
    {% for s in run.settlements %}
    <tr><td>{{ s.settlement_id }}</td><td>{{ s.msgid }}</td><td>{{ s.person_no }}</td><td>{{ s.disease_code }}</td>
      <td>{{ s.visit_date }}</td><td>{{ s.status }}</td><td>{{ s.total }}</td><td>{{ s.fund_pays }}</td>
      <td>{{ s.patient_pays }}</td></tr>
    {% endfor %}
  </table>
  {% if run.driver_output %}
  <details><summary>driver output</summary><pre>{{ run.driver_output }}</pre></details>
  {% endif %}
</section>
{% endfor %}
</body>
</html>
"""


def render(report: dict[str, Any]) -> str:
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["pretty"] = lambda value: json.dumps(value, ensure_ascii=False, indent=2)
    return env.from_string(TEMPLATE).render(report=report)
