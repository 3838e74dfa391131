"""The self-contained HTML report: one file, inline CSS, no scripts or fetches,
so it can be attached to a CI run and opened anywhere. Passing cases are one row
each; only cases that did not pass carry their requests, expectations and answers
(traces included), which keeps the whole suite's report small. The page is zh-CN
with CJK fonts named, so Chinese names render where the default font has none."""

from __future__ import annotations

import json
from typing import Any

import jinja2

TEMPLATE = r"""<!doctype html>
<html lang="zh-CN">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ tool }} — {{ run.headline }}</title>
<style>
  body { font: 14px/1.45 {{ sans | safe }}; margin: 2em auto; max-width: 72em; padding: 0 1em; color: #222; }
  h1 { font-size: 1.5em; margin-bottom: .2em; }
  .meta { color: #666; }
  #summary { border-radius: 6px; padding: .8em 1.2em; margin: 1em 0; font-size: 1.15em; }
  #summary.ok { background: #e7f6e9; border: 1px solid #7bc47f; }
  #summary.bad { background: #fde8e8; border: 1px solid #e08080; }
  .counts span { margin-right: 1.5em; }
  table { border-collapse: collapse; margin: .4em 0 1em; }
  th, td { border-bottom: 1px solid #ddd; padding: .25em .7em; text-align: left; vertical-align: top; }
  th { background: #f4f4f4; }
  .passed { color: #17762a; } .failed { color: #b31d1d; } .error { color: #8a1fa0; } .skipped { color: #888; }
  .badge { font-weight: bold; font-size: .85em; letter-spacing: .03em; }
  details.case { border: 1px solid #ddd; border-radius: 6px; margin: .5em 0; padding: .3em .8em; }
  details.case > summary { cursor: pointer; }
  pre, code { font-family: {{ mono | safe }}; }
  pre { background: #f7f7f7; padding: .6em; overflow-x: auto; font-size: 12px; white-space: pre-wrap; }
  table.passed-cases td { border-bottom: 1px solid #eee; }
  .why { white-space: pre-wrap; background: #fbfaf3; border-left: 3px solid #d8c97a; padding: .4em .8em; }
  td.result { white-space: nowrap; }
  td.exp { color: #17762a; } td.act { color: #b31d1d; }
  .tags code { background: #eef; padding: 0 .3em; margin-right: .3em; border-radius: 3px; }
</style>
</head>
<body>
<h1>{{ tool }}</h1>
<p class="meta">target <code>{{ run.target }}</code>
  {%- if run.get("door") == "national" %} (national door){% endif %} · started {{ run.started }} · run {{ run.run_id }}
  · {{ "%.2f"|format(run.seconds) }} s</p>

<section id="summary" class="{{ 'ok' if run.passed else 'bad' }}">
  <strong>{{ 'PASSED' if run.passed else 'FAILED' }}</strong> — {{ run.headline }}
  <div class="counts">
    <span>cases: <b id="count-cases">{{ run.summary.cases }}</b></span>
    <span class="passed">passed: <b id="count-passed">{{ run.summary.passed }}</b></span>
    <span class="failed">failed: <b id="count-failed">{{ run.summary.failed }}</b></span>
    <span class="error">errors: <b id="count-errors">{{ run.summary.errors }}</b></span>
    <span class="skipped">skipped: <b id="count-skipped">{{ run.summary.skipped }}</b></span>
  </div>
</section>
{% if run.skipped %}
<h2>Skipped</h2>
<table id="skipped">
  <tr><th>case</th><th>why</th></tr>
  {% for case in run.skipped %}
  <tr><td class="skipped"><b>{{ case.name }}</b> — {{ case.title }}</td><td>{{ case.why }}</td></tr>
  {% endfor %}
</table>
{% endif %}

{% if run.get("unexpressed") %}
<h2>Not compared through the national door</h2>
<table id="unexpressed">
  <tr><th>case</th><th>step</th><th>what</th><th>why</th></tr>
  {% for u in run.unexpressed %}
  <tr><td><a href="#case-{{ u.case }}">{{ u.case }}</a></td><td>{{ u.step }}</td><td><code>{{ u.path }}</code></td>
    <td>{{ u.reason }}</td></tr>
  {% endfor %}
</table>
{% endif %}

<h2>Rules → cases → result</h2>
<table id="rules">
  <tr><th>rule (tag)</th><th>cases</th><th>result</th></tr>
  {% for rule, cases in run.rules.items() %}
  {% set bad = cases | rejectattr("status", "equalto", "passed") | list %}
  <tr>
    <td><code>{{ rule }}</code></td>
    <td>{% for c in cases %}<a href="#case-{{ c.case }}" class="{{ c.status }}">{{ c.case }}</a>
      {{- ", " if not loop.last }}{% endfor %}</td>
    <td class="result {{ 'passed' if not bad else 'failed' }}">
      {%- if not bad %}all {{ cases|length }} passed{% else %}{{ bad|length }} of {{ cases|length }} not passed
      {%- endif %}</td>
  </tr>
  {% endfor %}
</table>

{% set not_passed = run.cases | rejectattr("status", "equalto", "passed") | list %}
{% set passed = run.cases | selectattr("status", "equalto", "passed") | list %}
{% if not_passed %}
<h2>Cases that did not pass</h2>
{% endif %}
{% for case in not_passed %}
<details class="case" id="case-{{ case.name }}" {{ "open" if case.status != "passed" }}>
  <summary><span class="badge {{ case.status }}">{{ case.status|upper }}</span>
    <b>{{ case.name }}</b> — {{ case.title }}
    <span class="meta">({{ case.steps|length }} steps, {{ "%.0f"|format(case.seconds * 1000) }} ms)</span></summary>
  <p class="meta">{{ case.source }} · world <code>{{ case.world }}</code> · session <code>{{ case.session }}</code></p>
  <p class="tags">{% for t in case.tags %}<code>{{ t }}</code>{% endfor %}</p>
  <div class="why">{{ case.why }}</div>
  <table>
    <tr><th>step</th><th>call</th><th>institution</th><th>result</th><th>details</th></tr>
    {% for step in case.steps %}
    <tr>
      <td>{{ step.id }}</td><td>{{ step.call }}</td><td>{{ step.institution }}</td>
      <td class="{{ step.status }}">{{ step.status }}</td>
      <td>
        {% if step.message %}<div>{{ step.message }}</div>{% endif %}
        {% if step.diffs %}
        <table class="diff">
          <tr><th>field</th><th>expected</th><th>actual</th></tr>
          {% for d in step.diffs %}
          <tr><td><code>{{ d.path }}</code></td><td class="exp">{{ d.expected_shown }}</td>
            <td class="act">{{ d.actual_shown }}</td></tr>
          {% endfor %}
        </table>
        {% endif %}
        {% if step.why %}<div class="why">{{ step.why }}</div>{% endif %}
        <details><summary>request, expected, answer</summary>
          <pre>request  {{ step.request | pretty }}</pre>
          <pre>expected {{ step.expected | pretty }}</pre>
          <pre>answer   {{ step.answer | pretty }}</pre>
        </details>
      </td>
    </tr>
    {% endfor %}
  </table>
</details>
{% endfor %}
{% if passed %}
<h2>Passed cases</h2>
<p class="meta">Each case's steps, expectations and hand derivation are in its source file.</p>
<table class="passed-cases">
  <tr><th>result</th><th>case</th><th>steps</th><th>ms</th></tr>
  {% for case in passed %}
  <tr id="case-{{ case.name }}"><td class="badge passed">PASSED</td>
    <td><b>{{ case.name }}</b> — {{ case.title }}<br><span class="meta">{{ case.source }}</span></td>
    <td>{{ case.steps | map(attribute="call") | join(", ") }}</td>
    <td>{{ "%.0f"|format(case.seconds * 1000) }}</td></tr>
  {% endfor %}
</table>
{% endif %}
</body>
</html>
"""


# Fonts with CJK glyphs on Linux, macOS and Windows, named so a browser whose default family has
# none still finds one (otherwise Chinese shows as empty boxes).
CJK_FONTS = '"Noto Sans CJK SC", "Source Han Sans SC", "PingFang SC", "Microsoft YaHei", "WenQuanYi Micro Hei"'
SANS = f'system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", {CJK_FONTS}, sans-serif'
MONO = f'ui-monospace, Menlo, Consolas, "DejaVu Sans Mono", "Noto Sans Mono CJK SC", {CJK_FONTS}, monospace'


def render(run: dict[str, Any]) -> str:
    """The page of `run` (reports.as_dict); titled by `run["tool"]`, the command that ran."""
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["pretty"] = lambda value: json.dumps(value, ensure_ascii=False, indent=2)
    tool = run.get("tool", "settlesim replay")
    return env.from_string(TEMPLATE).render(run=run, tool=tool, sans=SANS, mono=MONO)
