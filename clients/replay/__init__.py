"""Case replay: YAML cases (docs/cases.md) run against any server that implements
settlesim.v1, compared field by field (money exact to the fen), reported for people
and for CI. `cases` parses and validates, `target` checks the server, `requests`
builds what a step sends, `compare` checks answers, `runner` runs cases in parallel
sessions, `reports` and `html` report, `command` is what `settlesim replay` and
`settlesim conformance` do."""
